"""Keep a long activity visibly alive, so a crashed worker's attempt is retried in seconds.

Without a heartbeat timeout, an activity whose worker dies is only retried when its start-to-close
timeout expires (130 s for a model step). With one, the server notices within the heartbeat
timeout. `heartbeating()` sends heartbeats from a background task while the body runs, so code
that awaits one long call (a model, an HTTP API) needs no heartbeat calls of its own; code that
makes progress in pieces (a streamed reply) may also call `activity.heartbeat()` per piece.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from temporalio import activity

# The server retries an attempt that has not heartbeated for this long. `heartbeating()` beats
# every third of it, and workers send at most one heartbeat per HEARTBEAT_THROTTLE (the SDK would
# otherwise wait 80% of the timeout, 8 s, leaving a busy machine 2 s to spare).
HEARTBEAT_TIMEOUT = timedelta(seconds=10)
HEARTBEAT_THROTTLE = timedelta(seconds=3)


@contextlib.asynccontextmanager
async def heartbeating(every: timedelta | None = None) -> AsyncIterator[None]:
    """Heartbeat every `every` (default: a third of the activity's heartbeat timeout) until the
    block ends. Outside an activity, or in an activity without a heartbeat timeout, does nothing.
    """
    interval = every
    if interval is None:
        timeout = activity.info().heartbeat_timeout if activity.in_activity() else None
        if not timeout:
            yield
            return
        interval = timeout / 3

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval.total_seconds())
            activity.heartbeat()

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
