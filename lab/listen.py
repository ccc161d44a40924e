"""The lab's listener process (``rdc lab listen``, the ``lab`` child of ``rdc up``): one
asyncio loop serving the MLLP port (orders from sites, results from HL7 analyzers) and
the ASTM port (analyzers speaking E1394 / LIS2-A2).

One process for both so that ``rdc up`` supervises one child for the lab's front doors;
each handles a message in a worker thread, so one slow database write stalls neither.
A port set to 0 turns that listener off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from core.db import Database
from core.errors import ConfigurationError
from core.settings import Settings
from lab import astm_server, mllp_server

log = logging.getLogger(__name__)


async def start_listeners(db: Database, settings: Settings) -> list[asyncio.Server]:
    """Start the MLLP and ASTM servers that are switched on; their servers, started."""
    servers: list[asyncio.Server] = []
    host = settings.lab_host
    try:
        if settings.lab_mllp_port:
            servers.append(await mllp_server.serve(db, host, settings.lab_mllp_port))
            log.info("lab MLLP (HL7 orders and instrument results) on %s:%d", host,
                     settings.lab_mllp_port)
        if settings.lab_astm_port:
            servers.append(await astm_server.start(db, settings, host,
                                                   settings.lab_astm_port))
            log.info("lab ASTM (analyzers) on %s:%d", host, settings.lab_astm_port)
    except OSError as e:
        for server in servers:
            server.close()
        raise ConfigurationError(f"the lab listener cannot listen on {host}: {e}") from e
    if not servers:
        raise ConfigurationError("both lab ports are 0 (RDC_LAB_MLLP_PORT, "
                                 "RDC_LAB_ASTM_PORT): nothing to listen on")
    return servers


async def run(db: Database, settings: Settings,
              on_ready: Callable[[list[asyncio.Server]], None] | None = None) -> None:
    """Serve until cancelled (Ctrl-C / SIGTERM end the loop)."""
    servers = await start_listeners(db, settings)
    if on_ready is not None:
        on_ready(servers)
    try:
        await asyncio.gather(*(server.serve_forever() for server in servers))
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
