"""Flow data sources for agents' own calls (the agent flow behind the phones' feature codes):
they act on the running ACD (`engine.acd.router`). Merged into every call's sources by
`sources.build_sources`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ivr_engine.flow.services import DataSource

if TYPE_CHECKING:
    from ivr_engine.app import Engine
    from ivr_engine.sources import CallContext


def build_agent_sources(engine: Engine, ctx: CallContext) -> dict[str, DataSource]:
    """None yet: the agent flow (feature codes *90-*93) adds `acd.*` sources here."""
    return {}
