import asyncio
import os
import signal
from pathlib import Path

import pytest

from ivr_engine.errors import FlowError
from ivr_engine.flow.deploy import DeployError, FlowRegistry, FlowStore

GOOD = """\
flow: hotline
start: hello
nodes:
  hello: {type: play, prompt: welcome, next: bye}
  bye: {type: hangup}
"""
BROKEN = GOOD.replace("next: bye", "next: nowhere")


def write(d: Path, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "hotline.yaml").write_text(text)
    return d


def test_deploy_versions_and_rollback(tmp_path: Path) -> None:
    store = FlowStore(tmp_path / "deploy")
    src = write(tmp_path / "src", GOOD)
    v1, _, changed = store.deploy([src])
    assert changed and store.current_version() == v1
    assert (tmp_path / "deploy" / "current").resolve() == (
        tmp_path / "deploy" / "versions" / v1
    ).resolve()
    # same content again: nothing changes
    assert store.deploy([src])[0] == v1 and not store.deploy([src])[2]
    write(src, GOOD.replace("welcome", "greeting"))
    v2, _, _ = store.deploy([src])
    assert v2 != v1 and store.current_version() == v2
    assert [(v.version, v.current) for v in store.versions()] == [(v1, False), (v2, True)]
    assert store.rollback() == v1 and store.current_version() == v1
    assert store.rollback(v2[:6]) == v2
    with pytest.raises(DeployError, match="no deployed version"):
        store.rollback("ffffffffff")


def test_a_flow_failing_lint_never_replaces_a_good_one(tmp_path: Path) -> None:
    store = FlowStore(tmp_path / "deploy")
    good = store.deploy([write(tmp_path / "src", GOOD)])[0]
    with pytest.raises(DeployError) as exc:
        store.deploy([write(tmp_path / "bad", BROKEN)])
    assert exc.value.result is not None and "nowhere" in exc.value.result.errors[0].message
    assert store.current_version() == good
    assert len(store.versions()) == 1


def test_registry_keeps_each_version_immutable_and_reloads(tmp_path: Path) -> None:
    store = FlowStore(tmp_path / "deploy")
    src = write(tmp_path / "src", GOOD)
    store.deploy([src])
    registry = FlowRegistry(tmp_path / "deploy", entry="hotline")
    first = registry.current()
    assert registry.current() is first  # no reload, same object
    write(src, GOOD.replace("welcome", "greeting"))
    store.deploy([src])
    assert registry.current() is first  # a call in progress keeps what it started with
    second = registry.reload()
    assert second.version != first.version and registry.current() is second
    assert first.flows["hotline"].nodes["hello"].prompt[0].prompt == "welcome"  # untouched


def test_registry_refuses_a_bad_reload_and_keeps_the_old_set(tmp_path: Path) -> None:
    src = write(tmp_path / "flows", GOOD)
    registry = FlowRegistry(src)  # no deploy dir: reads the flow directory itself
    first = registry.current()
    write(src, BROKEN)
    with pytest.raises(FlowError, match="nowhere"):
        registry.reload()
    assert registry.current() is first


async def test_sighup_reloads(tmp_path: Path) -> None:
    store = FlowStore(tmp_path / "deploy")
    src = write(tmp_path / "src", GOOD)
    store.deploy([src])
    registry = FlowRegistry(tmp_path / "deploy")
    first = registry.current()
    loop = asyncio.get_running_loop()
    registry.install_sighup(loop)
    try:
        write(src, GOOD.replace("welcome", "greeting"))
        store.deploy([src])
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if registry.current() is not first:
                break
        assert registry.current().version == store.current_version()
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


def test_registry_reads_the_flows_directory_until_something_is_deployed(tmp_path: Path) -> None:
    src = write(tmp_path / "flows", GOOD)
    registry = FlowRegistry(tmp_path / "deploy", fallback=src)
    before = registry.current()
    store = FlowStore(tmp_path / "deploy")
    write(src, GOOD.replace("welcome", "greeting"))
    version = store.deploy([src])[0]
    assert registry.reload().version == version != before.version
