"""Running one actor as its own process: settings, logs, event loop, and drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from actors.runtime.logs import configure_logging
from actors.runtime.settings import Settings


def run_until_signalled(settings: Settings, main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run `main(stop)` on uvloop (unless disabled); SIGTERM or SIGINT sets `stop` for a graceful drain."""
    configure_logging(settings.log_level, settings.log_json)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    if settings.uvloop:
        import uvloop

        uvloop.run(runner())
    else:
        asyncio.run(runner())
