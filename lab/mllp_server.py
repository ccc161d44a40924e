"""The lab's HL7 front door: an MLLP listener, and what it does with each message.

Framing is python-hl7's (``hl7.mllp``: start block, end block + CR, a size limit), never
hand-written.  Each message is handed to :func:`handle_hl7` in a worker thread, so a
slow database never stalls the other connections, and the answer goes back on the same
connection, one ACK per message, in order.

What is answered (MSA-1, with the reason in MSA-3 and ERR-8; ERR-3 a table 0357 code):

- ``AA``: an order stored (MSA-3 names the center's order and tube accessions), or an
  instrument run stored;
- ``AR``: not readable as HL7, a message type the lab does not take, an unknown site or
  analyzer (MSH-4), a peer address the site or analyzer may not send from, or a message
  control id (MSH-10) that sender used before;
- ``AE``: readable but wrong: an unknown test code, a missing patient id, a bad date, a
  placer order number already ordered, results the run could not attach.

Every message is kept as a :class:`LabInboundMessage` whatever its answer; a refused one
in a transaction of its own, after the order's was rolled back, so nothing of it is
half-stored.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

from hl7.mllp import InvalidBlockError, start_hl7_server
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core import audit
from core.db import Database
from core.errors import Conflict, InvalidInput
from core.models import LabInboundMessage, LabSpecimen, Site
from core.sites import address_allowed
from lab.catalog import get_catalog
from lab.errors import UnknownTest
from lab.hl7_in import ORDER_TYPES, Header, MalformedMessage, build_ack, parse_order, read_header
from lab.instrument_oru import parse_oru
from lab.orders import accept_order
from lab.results_in import store_run

log = logging.getLogger(__name__)

#: The largest message taken (a run of a few hundred results is far below it).
MAX_MESSAGE_BYTES = 4 << 20
#: A connection that sends nothing for this long is closed.
IDLE_TIMEOUT_S = 600.0
INSTRUMENT_RESULT = "ORU^R01"


@dataclass(frozen=True)
class Answer:
    """The outcome of one message: the ACK code, its reason, and the ERR kind."""

    code: str
    text: str
    error: str | None = None


def _record(db: Database, *, sender: str, peer: str, header: Header | None, raw: str,
            answer: Answer) -> None:
    """Keep a refused message (its own transaction), and audit the refusal."""
    control = header.control_id if header is not None else ""
    kind = header.message_type[:16] if header is not None else ""
    for attempt in range(2):
        if attempt or not control or not sender:
            control = f"refused-{uuid.uuid4().hex}"
        try:
            with db.session() as s:
                row = LabInboundMessage(sender=sender, peer=peer[:64], channel="hl7",
                                        message_type=kind, control_id=control,
                                        outcome=answer.code, reason=answer.text, raw=raw)
                s.add(row)
                s.flush()
                audit.append(s, actor=f"peer:{peer}", action="lab.message_refused",
                             object_type="lab_inbound", object_id=str(row.id),
                             detail={"peer": peer, "sender": sender, "outcome": answer.code,
                                     "reason": answer.text, "message_type": kind,
                                     "control_id": header.control_id if header else ""})
            return
        except IntegrityError:
            continue  # the control id was taken meanwhile: keep it under a generated one


def _refuse(db: Database, raw: str, peer: str, header: Header | None, answer: Answer, *,
            sender: str = "") -> str:
    log.warning("lab hl7 %s from %s (%s): %s", answer.code, peer, sender or "?", answer.text)
    _record(db, sender=sender, peer=peer, header=header, raw=raw, answer=answer)
    return build_ack(header, answer.code, answer.text, error=answer.error)


def _duplicate(db: Database, sender: str, control_id: str) -> bool:
    with db.session() as s:
        return s.scalar(select(LabInboundMessage.id).where(
            LabInboundMessage.sender == sender,
            LabInboundMessage.control_id == control_id)) is not None


def _duplicate_answer(header: Header) -> Answer:
    return Answer("AR", f"duplicate message control id {header.control_id!r} (MSH-10) "
                  f"from {header.sending_facility!r}", "AR-duplicate")


def handle_hl7(db: Database, raw: str, peer_ip: str) -> str:
    """Take one HL7 message from ``peer_ip`` and return the ACK text to send back."""
    try:
        header = read_header(raw)
    except MalformedMessage as e:
        return _refuse(db, raw, peer_ip, None, Answer("AR", str(e), "AR-malformed"))
    catalog = get_catalog()
    if header.sending_facility in catalog.analyzers:
        return _instrument(db, raw, peer_ip, header)
    with db.session() as s:
        site = s.get(Site, header.sending_facility) if header.sending_facility else None
        known = site is not None and site.enabled
        allowed = known and site is not None and address_allowed(site, peer_ip)
    if not known:
        return _refuse(db, raw, peer_ip, header, Answer(
            "AR", f"unknown site {header.sending_facility!r} (MSH-4)", "AR-site"))
    sender = header.sending_facility
    if not allowed:
        return _refuse(db, raw, peer_ip, header, Answer(
            "AR", f"peer address {peer_ip} is not allowed for site {sender!r}", "AR-site"))
    if header.message_type not in ORDER_TYPES:
        return _refuse(db, raw, peer_ip, header, Answer(
            "AR", f"message type {header.message_type} is not taken from a site "
                  f"(expected {' or '.join(ORDER_TYPES)})", "AR-type"), sender=sender)
    if _duplicate(db, sender, header.control_id):
        return _refuse(db, raw, peer_ip, header, _duplicate_answer(header), sender=sender)
    try:
        with db.session() as s:
            req = parse_order(raw, catalog)
            order = accept_order(s, req, source="hl7", actor=f"site:{sender}")
            accessions = list(s.scalars(select(LabSpecimen.accession).where(
                LabSpecimen.order_id == order.id).order_by(LabSpecimen.id)))
            text = (f"order {order.filler_order_number} accepted: "
                    f"{len(accessions)} tube(s) {' '.join(accessions)}")
            s.add(LabInboundMessage(sender=sender, peer=peer_ip[:64], channel="hl7",
                                    message_type=header.message_type,
                                    control_id=header.control_id, outcome="AA",
                                    reason=text, raw=raw, order_id=order.id))
            s.flush()
    except MalformedMessage as e:
        return _refuse(db, raw, peer_ip, header, Answer("AR", str(e), "AR-malformed"),
                       sender=sender)
    except UnknownTest as e:
        return _refuse(db, raw, peer_ip, header, Answer("AE", str(e), "AE-code"),
                       sender=sender)
    except Conflict as e:
        return _refuse(db, raw, peer_ip, header, Answer("AE", str(e), "AE-duplicate"),
                       sender=sender)
    except InvalidInput as e:
        return _refuse(db, raw, peer_ip, header, Answer("AE", str(e), "AE-field"),
                       sender=sender)
    except IntegrityError:
        # Another connection stored the same control id (or placer order) first.
        if _duplicate(db, sender, header.control_id):
            return _refuse(db, raw, peer_ip, header, _duplicate_answer(header),
                           sender=sender)
        return _refuse(db, raw, peer_ip, header, Answer(
            "AE", "the order was stored by another message meanwhile (duplicate placer "
                  "order number)", "AE-duplicate"), sender=sender)
    log.info("lab hl7 AA from %s (%s): %s", peer_ip, sender, text)
    return build_ack(header, "AA", text)


def _instrument(db: Database, raw: str, peer_ip: str, header: Header) -> str:
    """An ORU^R01 from an HL7 analyzer of the catalog: its run, stored by results_in."""
    analyzer_id = header.sending_facility
    try:
        get_catalog().analyzer_for_peer(analyzer_id, peer_ip)
    except InvalidInput as e:
        return _refuse(db, raw, peer_ip, header, Answer("AR", str(e), "AR-site"))
    if header.message_type != INSTRUMENT_RESULT:
        return _refuse(db, raw, peer_ip, header, Answer(
            "AR", f"message type {header.message_type} is not taken from an analyzer "
                  f"(expected {INSTRUMENT_RESULT})", "AR-type"), sender=analyzer_id)
    # No control-id check here: MSH-10 is the run code, and a run resent because our ACK
    # was lost is recognised by store_run (analyzer + run code) and answered AA again.
    try:
        run = parse_oru(raw)
        stored = store_run(db, run, actor=f"analyzer:{analyzer_id}")
    except MalformedMessage as e:
        return _refuse(db, raw, peer_ip, header, Answer("AR", str(e), "AR-malformed"),
                       sender=analyzer_id)
    except InvalidInput as e:
        return _refuse(db, raw, peer_ip, header, Answer("AE", str(e), "AE-field"),
                       sender=analyzer_id)
    if stored.refused:
        answer = Answer("AE", f"run {run.run_code}: {stored.stored} stored, "
                        f"{len(stored.refused)} refused: " + "; ".join(stored.refused),
                        "AE-field")
    else:
        answer = Answer("AA", f"run {run.run_code}: {stored.stored} stored"
                        + (" (already received)" if getattr(stored, "duplicate", False)
                           else ""))
    for control in (header.control_id, f"resent-{uuid.uuid4().hex}"):
        try:
            with db.session() as s:
                s.add(LabInboundMessage(sender=analyzer_id, peer=peer_ip[:64], channel="hl7",
                                        message_type=header.message_type,
                                        control_id=control, outcome=answer.code,
                                        reason=answer.text, raw=raw))
            break
        except IntegrityError:
            continue  # the run was sent before: keep this copy under a generated id
    return build_ack(header, answer.code, answer.text, error=answer.error)


def answer_hl7(db: Database, raw: str, peer_ip: str) -> str:
    """:func:`handle_hl7`, and an ``AE`` (table 0357 code 207) when the center itself
    failed (database unreachable, catalog unreadable): the site keeps the message and
    sends it again, which a closed connection without an answer would not tell it."""
    try:
        return handle_hl7(db, raw, peer_ip)
    except Exception as e:
        log.exception("lab hl7 message from %s could not be handled", peer_ip)
        try:
            header: Header | None = read_header(raw)
        except InvalidInput:
            header = None
        return build_ack(header, "AE", f"the lab could not process the message now "
                         f"({type(e).__name__}); send it again later", error="AE")


# --------------------------------------------------------------------------- the server


def _decode(block: bytes) -> str:
    """UTF-8, or GB18030 (what Chinese county systems send when MSH-18 is not UTF-8)."""
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        return block.decode("gb18030", errors="replace")


async def _connection(db: Database, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    peer_ip = str(peer[0]) if peer else ""
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                block = await asyncio.wait_for(reader.readblock(),  # type: ignore[attr-defined]
                                               IDLE_TIMEOUT_S)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            except (InvalidBlockError, ValueError) as e:
                # Not MLLP, or too large: say why once, then close (the stream is lost).
                text = f"MLLP framing error: {e}"
                ack = await loop.run_in_executor(None, _refuse, db, "", peer_ip, None,
                                                 Answer("AR", text, "AR-malformed"))
                writer.writeblock(ack.encode("utf-8"))  # type: ignore[attr-defined]
                await writer.drain()
                return
            ack = await loop.run_in_executor(None, answer_hl7, db, _decode(block), peer_ip)
            writer.writeblock(ack.encode("utf-8"))  # type: ignore[attr-defined]
            await writer.drain()
    except Exception:
        log.exception("lab MLLP connection from %s failed", peer_ip)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def serve(db: Database, host: str, port: int) -> asyncio.Server:
    """Start the MLLP listener on ``host:port`` (0: a free port; read it from the
    returned server's sockets)."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _connection(db, reader, writer)

    server: asyncio.Server = await start_hl7_server(on_connect, host, port,
                                                    limit=MAX_MESSAGE_BYTES)
    return server
