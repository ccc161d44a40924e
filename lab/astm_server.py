"""The ASTM listener: analyzers connect over TCP and send their runs (E1381 + E1394).

Why this shape: the link protocol is in lab/astm.py without I/O; here each connection
feeds a :class:`lab.astm.Receiver` and writes back its ACK/NAKs, so frames with a bad
checksum are NAKed and sent again, and a transfer given up, timed out or cut before EOT
is discarded whole.  One completed transfer (ENQ .. EOT) is one run: parsed, checked
against the catalog (the analyzer named in the H record must connect from one of its
addresses), and stored by :func:`lab.results_in.store_run` in a worker thread so that
the database never stalls the other analyzers.  It runs in ``rdc lab listen`` beside
the MLLP server (lab/listen.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import uuid

from core import audit
from core.db import Database
from core.errors import InvalidInput
from core.models.lab import LabInboundMessage
from core.settings import Settings
from lab import astm
from lab.catalog import get_catalog
from lab.results_in import StoredRun, store_run

log = logging.getLogger(__name__)

#: An idle connection (no transfer under way) that sends nothing for this long is closed;
#: analyzers reconnect when they have a run.
IDLE_TIMEOUT_S = 3600.0


def _peer_ip(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    ip = str(peer[0]) if peer else ""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return ip


def refuse(db: Database, *, peer: str, sender: str, reason: str, raw: str,
           outcome: str = "AR") -> None:
    """Keep a refused ASTM session or transfer (its own transaction) and audit it."""
    with db.session() as s:
        row = LabInboundMessage(sender=sender[:64], peer=peer[:64], channel="astm",
                                message_type="ASTM", control_id=f"refused-{uuid.uuid4().hex}",
                                outcome=outcome, reason=reason, raw=raw)
        s.add(row)
        s.flush()
        audit.append(s, actor=f"peer:{peer}", action="lab.message_refused",
                     object_type="lab_inbound", object_id=str(row.id),
                     detail={"channel": "astm", "sender": sender, "reason": reason})
    log.warning("lab astm refused from %s (%s): %s", peer, sender or "?", reason)


def handle_transfer(db: Database, settings: Settings, records: list[str],
                    peer_ip: str) -> tuple[StoredRun | None, bool]:
    """One completed transfer: parse it, check the analyzer against the peer, store it.

    Returns the stored run (None when refused: recorded and audited) and whether the
    session may go on: a wrong analyzer ends it, a bad transfer from the right one not.
    """
    raw = "\r".join(records)
    sender = ""
    try:
        header = astm.parse_records(records[:1])[0]
        sender = header.get(5).strip()
        analyzer = get_catalog(settings).analyzer_for_peer(sender, peer_ip)
        if analyzer.protocol != "astm":
            raise InvalidInput(f"analyzer {sender} speaks {analyzer.protocol}, not ASTM")
    except InvalidInput as e:
        refuse(db, peer=peer_ip, sender=sender, reason=str(e), raw=raw)
        return None, False
    try:
        kinds = {r[:1].upper() for r in records}
        if "Q" in kinds and not kinds & {"O", "R"}:
            raise InvalidInput("a host query (Q record): the center does not answer "
                               "worklist queries; send results")
        run = astm.parse_run(records)
        stored = store_run(db, run, actor=f"analyzer:{analyzer.id}")
    except InvalidInput as e:
        refuse(db, peer=peer_ip, sender=analyzer.id, reason=str(e), raw=raw, outcome="AE")
        return None, True
    with db.session() as s:
        s.add(LabInboundMessage(
            sender=analyzer.id, peer=peer_ip[:64], channel="astm", message_type="ASTM",
            control_id=f"run-{stored.run_id}-{uuid.uuid4().hex[:12]}",
            outcome="AE" if stored.refused else "AA",
            reason=(f"run {run.run_code}: {stored.stored} results, {stored.controls} "
                    f"controls stored" + (" (already received)" if stored.duplicate else "")
                    + (f"; {len(stored.refused)} refused: " + "; ".join(stored.refused)
                       if stored.refused else "")),
            raw=raw))
    return stored, True


async def _connection(db: Database, settings: Settings, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
    peer_ip = _peer_ip(writer)
    catalog = get_catalog(settings)
    if not any(a.protocol == "astm" and a.allows(peer_ip) for a in catalog.analyzers.values()):
        await asyncio.to_thread(refuse, db, peer=peer_ip, sender="",
                                reason=f"{peer_ip} is not the address of any ASTM analyzer "
                                       f"of the lab catalog", raw="")
        writer.close()
        return
    receiver = astm.Receiver()
    try:
        while True:
            wait = astm.RECEIVER_TIMEOUT_S if receiver.in_transfer else IDLE_TIMEOUT_S
            try:
                data = await asyncio.wait_for(reader.read(4096), wait)
            except TimeoutError:
                receiver.timeout()
                _log_aborted(receiver, peer_ip)
                return
            if not data:
                receiver.connection_lost()
                _log_aborted(receiver, peer_ip)
                return
            reply = receiver.feed(data)
            if reply:
                writer.write(reply)
                await writer.drain()
            _log_aborted(receiver, peer_ip)
            while receiver.transfers:
                records = receiver.transfers.pop(0)
                _, go_on = await asyncio.to_thread(handle_transfer, db, settings, records,
                                                   peer_ip)
                if not go_on:
                    return  # a refused analyzer: the session ends
    except ConnectionError:
        receiver.connection_lost()
        _log_aborted(receiver, peer_ip)
    finally:
        writer.close()


def _log_aborted(receiver: astm.Receiver, peer_ip: str) -> None:
    while receiver.aborted:
        log.warning("lab astm transfer from %s discarded (nothing stored): %s", peer_ip,
                    receiver.aborted.pop(0))


async def start(db: Database, settings: Settings, host: str, port: int) -> asyncio.Server:
    """Listen on ``host:port`` (0: a free port; read it from the server's sockets)."""
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _connection(db, settings, reader, writer)
        except Exception:
            log.exception("lab astm connection failed")

    return await asyncio.start_server(on_connect, host, port)


async def serve(db: Database, settings: Settings, host: str, port: int, *,
                ready: asyncio.Event | None = None) -> None:
    """Serve analyzers until cancelled; ``ready`` is set once the port listens."""
    server = await start(db, settings, host, port)
    log.info("lab astm listening on %s", ", ".join(
        str(sock.getsockname()) for sock in server.sockets))
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()
