"""The parts of the ACD service that ride on the router: each is a factory that takes the
running `AcdService` and returns an async context manager (started after the router, stopped
before it). They see the router's queue events by appending to `service.router.listeners`
(acd/queue_events.py), publish through `service.publisher`, and may set
`service.router.task_sink` (non-voice tasks).

The composition root (`app.py`) hands `EXTENSIONS` to every `AcdService` it builds. A module
that adds one imports nothing from here; it is listed below, in start order.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from ivr_engine.acd_stats import acd_stats_extension
from ivr_engine.agent_confirm import extension as agent_confirm_extension
from ivr_engine.agent_keep import agent_keep_extension
from ivr_engine.callback_keep import callback_keep_extension
from ivr_engine.queue_log import queue_log_extension
from ivr_engine.tasks import task_extension, task_keep_extension

if TYPE_CHECKING:
    from ivr_engine.acd_gateway import AcdService

Extension = Callable[["AcdService"], AbstractAsyncContextManager[Any]]

# Pauses kept across a restart first: they are in the router before the agents log in.
EXTENSIONS: list[Extension] = [agent_keep_extension, task_extension, agent_confirm_extension]
EXTENSIONS += [queue_log_extension, acd_stats_extension]  # queue_log, then live statistics
# Callbacks and tasks from before a restart last: queue_log and the statistics see them queued
# again (no agent is logged in before the AMI rebuild, which starts after every extension).
EXTENSIONS += [callback_keep_extension, task_keep_extension]
