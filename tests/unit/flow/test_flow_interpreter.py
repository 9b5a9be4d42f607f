import asyncio
import datetime as dt
import logging
from collections.abc import Mapping

import pytest

from ivr_engine.flow.channel import CallerInfo
from ivr_engine.flow.fake import FakeChannel, MemoryAudit, TextPrompts, Transcript
from ivr_engine.flow.interpreter import Interpreter, cn_id_ok, language_chain, luhn_ok
from ivr_engine.flow.services import DialplanQueueGateway, QueueRequest, Services
from tests.unit.flow.flow_helpers import CST, NOON, flows, run

MENU = """\
flow: demo
start: intro
hotkeys: {operator: person, repeat: true, back: true}
nodes:
  intro: {type: play, prompt: hello, next: main}
  main:
    type: menu
    prompt: main_long
    reprompt: main_short
    options: {1: sub, 2: info, 9: main}
    timeout: 5
    no_input: {max: 3, prompts: [ni_1, ni_2], exit: ni_exit}
    no_match: {max: 2, prompts: [nm_1], exit: nm_exit}
  info: {type: play, prompt: info, next: main}
  sub:
    type: menu
    prompt: sub
    options: {1: end}
    no_input: {max: 1, exit: end}
    no_match: {max: 1, exit: end}
  ni_exit: {type: hangup, reason: no input}
  nm_exit: {type: hangup, reason: no match}
  person: {type: hangup, reason: person}
  end: {type: hangup, reason: end}
"""


async def test_no_input_and_no_match_are_counted_separately() -> None:
    fs = flows(MENU)
    # 2 silences + 1 wrong key + 1 silence: the third silence exhausts no_input (max 3),
    # although four attempts failed; no_match (max 2) was hit only once.
    r = await run(fs, "t,t,7,t")
    assert r.outcome.kind == "hangup" and r.outcome.detail["reason"] == "no input"
    assert [s for _, _, s in r.inputs()] == ["no-input", "no-input", "no-match", "no-input"]
    r = await run(fs, "7,t,8")
    assert r.outcome.detail["reason"] == "no match"


async def test_escalating_prompts_then_short_reprompt() -> None:
    r = await run(flows(MENU), "t,t,8,1,1")
    assert r.prompts() == [
        "hello",
        "main_long",
        "ni_1",
        "main_short",  # first silence: first escalation, then the short menu
        "ni_2",
        "main_short",  # second silence: the second escalation
        "nm_1",
        "main_short",  # a wrong key has its own escalation list
        "sub",
    ]


async def test_greet_long_only_the_first_time_in_a_call() -> None:
    r = await run(flows(MENU), "2,1,1")
    assert r.prompts() == ["hello", "main_long", "info", "main_short", "sub"]


async def test_counters_reset_on_entry_from_elsewhere_not_on_self_loop() -> None:
    fs = flows(MENU)
    # silence, then 2 -> info -> back to main: entered from elsewhere, counters reset, so two
    # more silences do not reach max 3
    r = await run(fs, "t,2,t,t,1,1")
    assert r.outcome.detail["reason"] == "end"
    # option 9 loops main onto itself: counters are kept, so the third silence is the end
    r = await run(fs, "t,9,t,t")
    assert r.outcome.detail["reason"] == "no input"


async def test_hotkeys_operator_repeat_back() -> None:
    fs = flows(MENU)
    r = await run(fs, "0")
    assert r.outcome.detail["reason"] == "person"
    r = await run(fs, "*,t,t,t")  # repeat does not count as an attempt
    assert r.prompts()[:3] == ["hello", "main_long", "main_long"]
    assert r.outcome.detail["reason"] == "no input"
    r = await run(fs, "1,#,1,1")  # back from sub to main
    assert r.nodes()[:4] == ["intro", "main", "sub", "main"]
    assert ("sub", "#", "hotkey:goto") in r.inputs()


async def test_barge_in_and_legal_text() -> None:
    fs = flows(MENU.replace("prompt: hello, next", "prompt: hello, barge_in: false, next"))
    # "!2" pressed during the legal text (no barge-in): lost, the menu still plays and waits
    r = await run(fs, "!2,!1,1")
    assert r.prompts()[:2] == ["hello", "main_long"]
    assert r.channel.log[0].get("pressed") == "ignored (no barge-in)"
    # "!1" during the menu prompt barges in
    assert r.nodes()[-2:] == ["sub", "end"]
    # a digit pressed into a barge-in play node is type-ahead for the next input
    r = await run(flows(MENU), "!2")
    assert r.nodes()[:3] == ["intro", "main", "info"]
    assert ("intro", "", "barge-in") in r.inputs()


COLLECT = """\
flow: demo
start: card
vars:
  card: {type: str, sensitive: true}
  amount: {type: int, default: 0}
nodes:
  card:
    type: collect
    prompt: enter_card
    var: card
    sensitive: true
    min_digits: 16
    max_digits: 19
    validate: {luhn: true}
    no_input: {max: 2, exit: fail}
    no_match: {max: 2, prompts: [bad_card], exit: fail}
    next: amount
  amount:
    type: collect
    prompt: enter_amount
    var: amount
    max_digits: 4
    terminator: "#"
    validate: {pattern: "[1-9][0-9]*"}
    no_input: {max: 2, exit: fail}
    no_match: {max: 2, exit: fail}
    next: readback
  readback:
    type: confirm
    prompt:
      - {say: masked, value: card}
      - {say: money, value: amount}
    no_input: {max: 1, exit: cancelled}
    no_match: {max: 2, exit: cancelled}
    yes: done
    retry: card
    audit:
      operation: payment
      details: {amount: amount, card: mask(card)}
  done: {type: hangup, reason: done}
  cancelled: {type: hangup, reason: cancelled}
  fail: {type: hangup, reason: fail}
"""
GOOD = "4111111111111111"
TEN = NOON.replace(hour=10)
BAD = "4111111111111112"


async def test_collect_luhn_terminator_inter_digit_and_masking(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fs = flows(COLLECT)
    r = await run(fs, f"{BAD}#,{GOOD}#,1234567,1")
    # bad Luhn -> no-match; good card; 1234 (max 4 digits: "567" is type-ahead, flushed
    # before the confirm, so it cannot answer it); the confirm gets "1"
    assert [s for _, _, s in r.inputs()][:3] == ["no-match", "match", "match"]
    assert r.outcome.detail["reason"] == "done"
    assert [a.outcome for a in r.audit.entries] == ["confirmed"]
    assert r.audit.entries[0].details == {"amount": "1234", "card": "****1111"}
    said = " ".join(e["text"] for e in r.transcript.of("prompt"))
    assert "ending in 1111" in said and GOOD not in said
    # the card number appears nowhere: transcript, channel log, logs
    blob = repr(r.transcript.as_json()) + repr(r.channel.log) + caplog.text
    assert GOOD not in blob and BAD not in blob and "411111" not in blob
    assert ("card", "******", "match") in r.inputs()


async def test_inter_digit_timeout_ends_entry_and_min_digits_apply() -> None:
    fs = flows(COLLECT.replace("min_digits: 16", "min_digits: 4"))
    # "4111" then a pause: the entry ends at the inter-digit timeout; 4 digits fail Luhn
    r = await run(fs, "4111,t,t")
    assert r.inputs()[0][2] == "no-match"


async def test_type_ahead_is_flushed_before_a_sensitive_collect() -> None:
    text = """\
    flow: demo
    start: m
    vars: {pin: {type: str, sensitive: true}}
    nodes:
      m:
        type: menu
        prompt: p
        options: {1: pin}
        no_input: {max: 1, exit: end}
        no_match: {max: 1, exit: end}
      pin:
        type: collect
        prompt: enter_pin
        var: pin
        sensitive: true
        min_digits: 4
        max_digits: 4
        no_input: {max: 1, exit: end}
        no_match: {max: 1, exit: end}
        next: end
      end: {type: hangup}
    """
    # "15678": 1 chooses, 5678 typed ahead is dropped; the PIN is the next entry
    r = await run(flows(text), "15678,4321")
    assert r.inputs()[-1] == ("pin", "******", "match")
    assert r.channel.log  # the fake recorded prompts...
    assert "4321" not in repr(r.channel.log) + repr(r.transcript.events)


async def test_confirm_outcomes_are_audited() -> None:
    fs = flows(COLLECT)
    entry = f"{GOOD}#,12#"
    r = await run(fs, f"{entry},2,{entry},1")
    assert [a.outcome for a in r.audit.entries] == ["re-enter", "confirmed"]
    r = await run(fs, f"{entry},t")
    assert r.outcome.detail["reason"] == "cancelled"
    assert [a.outcome for a in r.audit.entries] == ["cancelled:silence"]
    r = await run(fs, f"{entry},7,8")
    assert [a.outcome for a in r.audit.entries] == ["cancelled:invalid"]
    r = await run(fs, f"{entry},h")
    assert r.outcome.kind == "caller_hangup"
    assert [a.outcome for a in r.audit.entries] == ["cancelled:hangup"]


async def test_confirm_ignores_keys_typed_before_the_read_back() -> None:
    fs = flows(COLLECT)
    # "12#1": the amount is 12, the "1" after # is type-ahead and must not confirm
    r = await run(fs, f"{GOOD}#,12#1,t")
    assert [a.outcome for a in r.audit.entries] == ["cancelled:silence"]


SERVICES = """\
flow: main
start: who
timezone: Asia/Shanghai
on_hangup: gone
on_error: oops
vars:
  n: {type: int, default: 0}
  tries: {type: int, default: 0}
sources:
  cif.caller:
    params: {number: str}
    fields: {found: bool, tier: str, due: date, amount: num}
maps:
  prio: {type: int, default: 1, values: {vip: 10}}
nodes:
  who:
    type: lookup
    source: cif.caller
    params: {number: caller.number}
    result: cust
    timeout: 0.05
    next: lang
    error: unknown
  lang: {type: set, language: "{if(cust.tier == 'vip', 'yue', 'en')}", next: hours}
  unknown: {type: set, vars: {n: 99}, next: hours}
  hours:
    type: schedule
    hours: {mon-fri: ["08:00-12:00", "13:00-18:00"], sat: "09:00-12:00"}
    holidays: [2026-10-01, 01-01]
    open: pin
    closed: closed
    holiday: holiday
  pin:
    type: subflow
    flow: sub
    params: {who: cust.tier}
    outputs: {tries: attempts}
    exits: {ok: q, bad: closed}
  q:
    type: queue
    queue: "{if(cust.tier == 'vip', 'vip', 'general')}"
    priority: prio[cust.tier] + n
    skills: "lang_{call.lang}"
    data: {tier: cust.tier, tries: tries}
    on: {timeout: xfer}
  xfer:
    type: transfer
    to: "PJSIP/backoffice"
    busy: closed
    fail: closed
  closed: {type: hangup, reason: closed}
  holiday: {type: hangup, reason: holiday}
  oops: {type: hangup, reason: error}
  gone: {type: set, vars: {n: -1}, next: gone_end}
  gone_end: {type: hangup}
"""
SUBFLOW = """\
flow: sub
params: {who: str}
returns: {attempts: int}
start: ask
nodes:
  ask:
    type: menu
    prompt: p
    options: {1: ok, 2: bad}
    no_input: {max: 1, exit: bad}
    no_match: {max: 1, exit: bad}
  ok: {type: return, exit: ok, values: {attempts: 2}}
  bad: {type: return, exit: bad}
"""


def source(result: Mapping[str, object] | None = None, *, delay: float = 0.0, fail: bool = False):
    calls: list[Mapping[str, object]] = []

    async def src(params: Mapping[str, object]) -> Mapping[str, object]:
        calls.append(dict(params))
        if delay:
            await asyncio.sleep(delay)
        if fail:
            raise RuntimeError("database is locked")
        return result or {}

    src.calls = calls  # type: ignore[attr-defined]
    return src


async def test_lookup_language_schedule_subflow_queue() -> None:
    fs = flows(SERVICES, SUBFLOW)
    vip = source({"found": True, "tier": "vip", "due": "2026-11-28", "amount": "12.5"})
    r = await run(fs, "1", flow="main", sources={"cif.caller": vip}, at=TEN)
    assert vip.calls == [{"number": "13800138000"}]  # type: ignore[attr-defined]
    assert r.outcome.kind == "queue"
    assert r.queue.requests[0] == QueueRequest(
        call_id="try-1",
        queue="vip",
        skills="lang_yue",
        priority=10,
        language="yue",
        data={"tier": "vip", "tries": "2"},
        timeout=600.0,
    )
    assert ("call.lang", "yue") in [(e["name"], e["value"]) for e in r.transcript.of("set")]


async def test_lookup_timeout_and_failure_take_the_error_exit() -> None:
    fs = flows(SERVICES, SUBFLOW)
    slow = source({"found": True}, delay=1.0)
    r = await run(fs, "1", flow="main", sources={"cif.caller": slow}, at=TEN)
    assert "unknown" in r.nodes()
    broken = source(fail=True)
    r = await run(fs, "1", flow="main", sources={"cif.caller": broken}, at=TEN)
    assert "unknown" in r.nodes()
    assert r.queue.requests[0].priority == 1 + 99


@pytest.mark.parametrize(
    ("when", "reason"),
    [
        (dt.datetime(2026, 11, 25, 12, 30, tzinfo=CST), "closed"),  # lunch
        (dt.datetime(2026, 11, 25, 2, 0, tzinfo=dt.UTC), "queue"),  # 10:00 in Shanghai
        (dt.datetime(2026, 11, 25, 11, 0, tzinfo=dt.UTC), "closed"),  # 19:00 in Shanghai
        (dt.datetime(2026, 11, 28, 10, 0, tzinfo=CST), "queue"),  # Saturday morning
        (dt.datetime(2026, 11, 29, 10, 0, tzinfo=CST), "closed"),  # Sunday
        (dt.datetime(2026, 10, 1, 10, 0, tzinfo=CST), "holiday"),
        (dt.datetime(2027, 1, 1, 10, 0, tzinfo=CST), "holiday"),  # yearly holiday
    ],
)
async def test_schedule(when: dt.datetime, reason: str) -> None:
    fs = flows(SERVICES, SUBFLOW)
    r = await run(fs, "1", flow="main", sources={"cif.caller": source({"tier": "x"})}, at=when)
    got = r.outcome.kind if r.outcome.kind == "queue" else r.outcome.detail.get("reason")
    assert got == reason


async def test_queue_timeout_then_transfer_busy() -> None:
    fs = flows(SERVICES, SUBFLOW)
    r = await run(
        fs,
        "1",
        flow="main",
        sources={"cif.caller": source({"tier": "x"})},
        at=NOON.replace(hour=10),
        queue_outcome="timeout",
        transfer_status="busy",
    )
    assert r.nodes()[-3:] == ["q", "xfer", "closed"]
    r = await run(
        fs,
        "1",
        flow="main",
        sources={"cif.caller": source({"tier": "x"})},
        at=NOON.replace(hour=10),
        queue_outcome="timeout",
        transfer_status="answered",
    )
    assert r.outcome.kind == "transfer" and r.outcome.detail["to"] == "PJSIP/backoffice"


async def test_hangup_runs_on_hangup_without_the_caller() -> None:
    fs = flows(SERVICES, SUBFLOW)
    r = await run(
        fs,
        "h",
        flow="main",
        sources={"cif.caller": source({"tier": "x"})},
        at=NOON.replace(hour=10),
    )
    assert r.outcome.kind == "caller_hangup"
    assert r.nodes()[-2:] == ["gone", "gone_end"]
    assert ("n", "-1") in [(e["name"], e["value"]) for e in r.transcript.of("set")]


async def test_runtime_error_goes_to_on_error() -> None:
    text = SERVICES.replace("priority: prio[cust.tier] + n", "priority: prio[cust.tier] / n")
    text = text.replace("q:\n    type: queue", "q:\n    type: queue")
    fs = flows(text.replace("prio[cust.tier] / n", "int(prio[cust.tier] / n)"), SUBFLOW)
    r = await run(
        fs,
        "1",
        flow="main",
        sources={"cif.caller": source({"tier": "x"})},
        at=NOON.replace(hour=10),
    )
    assert r.outcome.detail.get("reason") == "error"  # division by zero -> on_error route


async def test_no_route_left_falls_back_to_the_dialplan() -> None:
    fs = flows(
        """\
        flow: main
        start: a
        vars: {n: {type: int, default: 0}}
        nodes:
          a: {type: set, vars: {n: 1 / n}, next: b}
          b: {type: hangup}
        """.replace("1 / n", "int(1 / n)")
    )
    r = await run(fs, "")
    assert r.outcome.kind == "error"
    assert r.channel.variables["IVR_NEXT"] == "operator"
    assert r.channel.variables["IVR_FLOW_ERROR"] == "flow error"


async def test_subflow_depth_limit() -> None:
    chain = []
    for i in range(4):
        nxt = f"f{i + 1}"
        body = (
            f"  s: {{type: subflow, flow: {nxt}, next: r}}\n  r: {{type: return}}\n"
            if i < 3
            else "  s: {type: return}\n"
        )
        chain.append(f"flow: f{i}\nmax_subflow_depth: 2\nstart: s\nnodes:\n{body}")
    fs = flows(*chain)
    r = await run(fs, "", flow="f0")
    assert r.outcome.kind == "error" and "depth" in r.outcome.detail["reason"]


async def test_dialplan_queue_gateway_sets_channel_variables() -> None:
    fs = flows(SERVICES, SUBFLOW)
    transcript = Transcript()
    services = Services(
        {"cif.caller": source({"tier": "vip"})}, DialplanQueueGateway(), MemoryAudit(), transcript
    )
    channel = FakeChannel(CallerInfo("13926000001"), "1")
    out = await Interpreter(fs, services, TextPrompts(), clock=lambda: NOON.replace(hour=10)).run(
        channel, "main"
    )
    assert out.kind == "queue" and out.detail["result"] == "handed_off"
    assert channel.variables == {
        "IVR_NEXT": "queue",
        "IVR_QUEUE": "vip",
        "IVR_PRIORITY": "10",
        "IVR_SKILLS": "lang_yue",
        "IVR_LANGUAGE": "yue",
        "IVR_DATA_TIER": "vip",
        "IVR_DATA_TRIES": "2",
    }


async def test_max_visits_bounds_a_loop() -> None:
    fs = flows(
        """\
        flow: main
        start: a
        vars: {n: {type: int, default: 0}}
        nodes:
          a: {type: set, vars: {n: n + 1}, next: a, max_visits: 3, on_max_visits: b}
          b: {type: hangup}
        """
    )
    r = await run(fs, "")
    assert r.nodes() == ["a", "a", "a", "b"]


def test_checks() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert cn_id_ok("11010519491231002X") and cn_id_ok("11010519491231002*")
    assert not cn_id_ok("110105194912310021")
    assert language_chain("yue") == ("yue", "cmn", "en")
    assert language_chain("en") == ("en", "cmn")
    assert language_chain(None) == ("cmn", "en")


async def test_cancellation_propagates() -> None:
    fs = flows(SERVICES, SUBFLOW)
    services = Services(
        {"cif.caller": source({"tier": "x"}, delay=10)},
        DialplanQueueGateway(),
        MemoryAudit(),
        Transcript(),
    )
    flow = fs.flows["main"]
    assert flow.nodes["who"]
    interp = Interpreter(fs, services, TextPrompts())
    task = asyncio.create_task(interp.run(FakeChannel(CallerInfo("1"), "1"), "main"), name="call")
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class LeakyPrompts(TextPrompts):
    """A renderer whose error message quotes the value, as a careless one might."""

    def say(self, kind: str, value: object, langs):  # type: ignore[no-untyped-def]
        raise ValueError(f"cannot say {value!r}")


async def test_renderer_errors_never_carry_a_sensitive_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fs = flows(COLLECT)
    r = await run(fs, f"{GOOD}#,12#,1", prompts=LeakyPrompts())
    assert r.outcome.kind == "error"
    assert "details withheld" in caplog.text
    assert GOOD not in caplog.text and GOOD not in repr(r.outcome)


async def test_each_call_keeps_the_flow_set_it_started_with() -> None:
    old = flows(MENU)
    new = flows(MENU.replace("prompt: hello", "prompt: hello_v2"))
    transcript = Transcript()
    interp = Interpreter(
        old, Services({}, DialplanQueueGateway(), MemoryAudit(), transcript), TextPrompts()
    )
    await interp.run(FakeChannel(CallerInfo("1"), "0"), "demo", flows=new)
    assert transcript.of("prompt")[0]["prompt"] == "hello_v2"


async def test_bad_parameters_fall_back_instead_of_raising() -> None:
    fs = flows(SUBFLOW)
    r = await run(fs, "1", flow="sub", params={"nosuch": 1})
    assert r.outcome.kind == "error"
    assert r.channel.variables["IVR_NEXT"] == "operator"
    assert r.channel.variables["IVR_FLOW_ERROR"] == "cannot start flow"


async def test_a_failing_source_never_logs_a_sensitive_parameter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    text = """\
    flow: demo
    start: pin
    vars: {pin: {type: str, sensitive: true}}
    sources:
      cif.verify_pin:
        params: {pin: {type: str, sensitive: true}}
        fields: {ok: bool}
    nodes:
      pin:
        type: collect
        prompt: enter_pin
        var: pin
        sensitive: true
        max_digits: 6
        no_input: {max: 1, exit: end}
        no_match: {max: 1, exit: end}
        next: check
      check: {type: lookup, source: cif.verify_pin, params: {pin: pin}, next: end, error: end}
      end: {type: hangup}
    """

    async def careless(params: Mapping[str, object]) -> Mapping[str, object]:
        raise ValueError(f"no customer with PIN {params['pin']}")

    r = await run(flows(text), "654321", sources={"cif.verify_pin": careless})
    assert "check" in r.nodes() and r.outcome.kind == "hangup"
    assert "details withheld" in caplog.text and "654321" not in caplog.text
