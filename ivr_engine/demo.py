"""`ivr-engine demo`: everything the demo hotline needs before the daemon starts.

Brings the dev PBX up (building it the first time), seeds the demo customers (the hotline
issue's personas plus a synthetic book) and checks that the prompts have been built.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ivr_engine.agent_keep import state_path
from ivr_engine.cif.seed import seed
from ivr_engine.cif.store import CifStore
from ivr_engine.config import Settings
from ivr_engine.errors import ConfigError
from ivr_engine.pbx import DevPbx
from ivr_engine.prompts import PromptCatalogue

log = logging.getLogger(__name__)


def _say(line: str) -> None:
    print(f"demo: {line}", flush=True)


async def _seed(path: Path, customers: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    store = await CifStore.open(path)
    try:
        result = await seed(store, customers=customers)
    finally:
        await store.close()
    _say(
        f"customers: {result.total_customers} in {path} "
        f"({result.personas_added} personas and {result.synthetic_added} synthetic added now)"
    )


def prepare(settings: Settings, *, customers: int) -> None:
    catalogue = PromptCatalogue.load(settings.prompts.dir)
    sounds = catalogue.sound_root()
    if not any(sounds.rglob("*.wav")):
        raise ConfigError(
            f"no prompt audio in {sounds}: run `ivr-engine prompts build` (make does it)"
        )
    pbx = DevPbx.from_settings(settings, progress=_say)
    result = pbx.up()
    _say(f"dev PBX {result.action} (pid {result.pid}) in {result.seconds:.1f}s")
    asyncio.run(_seed(Path(settings.store.path), customers))
    # The demo starts with every agent as its phone says: pauses and logouts by hand kept by
    # an earlier demo's daemon (e.g. a no-answer pause) would keep the walkthrough's agent away.
    kept = state_path(Path(settings.store.path))
    if kept.exists():
        kept.unlink()
        _say(f"agent pauses kept by an earlier demo cleared ({kept})")
