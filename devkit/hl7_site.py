"""A county site's HL7 side, for the demo and the tests: it writes OML^O21 / ORM^O01
orders and sends them over MLLP, and it receives the results (ORU^R01) the center sends
back, answering each with an ACK ``AA`` and keeping every one it got.

MLLP framing is python-hl7's (``hl7.mllp``) on both sides, as in the center's listener,
so the tests exercise a real client against a real server.  The receiver runs its own
asyncio loop in a thread, so a synchronous test or the demo can start it, point a site's
HL7 endpoint at ``receiver.port`` and read ``receiver.messages``.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from hl7.mllp import open_hl7_connection, start_hl7_server

#: HL7 table 0376 code of each storage condition (SPM-15).
HANDLING_CODE = {"room": "AMB", "refrigerated": "REF", "frozen": "FRZ"}


def hl7_time(moment: datetime) -> str:
    """A DTM with seconds and offset, in UTC."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _segment(name: str, fields: dict[int, str]) -> str:
    """One segment from {field number: text}; fields not given are empty."""
    top = max(fields) if fields else 0
    return "|".join([name, *(fields.get(i, "") for i in range(1, top + 1))])


@dataclass(frozen=True)
class Tube:
    """One tube of a demo order: the site's id for it and the tests ordered on it."""

    tube_id: str
    tests: tuple[str, ...]
    specimen_type: str = "serum"
    condition: str = "room"
    spun: bool = True


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str            # "FAMILY^GIVEN"
    birth_date: str      # YYYYMMDD
    sex: str             # M / F
    visit: str = ""


def oml_o21(site_id: str, placer: str, patient: Patient, tubes: Sequence[Tube], *,
            collected_at: datetime, control_id: str | None = None, stat: bool = False,
            provider: str = "1001^WANG^Li", now: datetime | None = None) -> str:
    """An OML^O21 (v2.5.1): one ORC/OBR per test, each followed by its tube's SPM
    (SPM-2 tube id, SPM-4 type, SPM-15 handling, SPM-17 collection time, SPM-24 CFU
    when spun)."""
    now = now or datetime.now(UTC)
    control_id = control_id or f"OML{uuid.uuid4().hex[:12].upper()}"
    lines = [
        _segment("MSH", {1: "^~\\&", 2: "COUNTY-LIS", 3: site_id, 4: "RDC", 5: "LAB",
                         6: hl7_time(now), 8: "OML^O21^OML_O21", 9: control_id, 10: "P",
                         11: "2.5.1", 17: "UNICODE UTF-8"}),
        _segment("PID", {1: "1", 3: f"{patient.patient_id}^^^{site_id}^MR", 5: patient.name,
                         7: patient.birth_date, 8: patient.sex}),
        _segment("PV1", {1: "1", 2: "O", 19: patient.visit}),
    ]
    n = 0
    for tube in tubes:
        for code in tube.tests:
            n += 1
            lines.append(_segment("ORC", {1: "NW", 2: placer, 12: provider}))
            lines.append(_segment("OBR", {1: str(n), 2: placer, 4: f"{code}^{code}^L",
                                          5: "S" if stat else "R", 7: hl7_time(collected_at),
                                          16: provider}))
            spm: dict[int, str] = {
                1: str(n), 2: tube.tube_id, 4: f"{tube.specimen_type}^{tube.specimen_type}",
                15: f"{HANDLING_CODE[tube.condition]}^^HL70376",
                17: hl7_time(collected_at)}
            if tube.spun:
                spm[24] = "CFU^Centrifuged^HL70493"
            lines.append(_segment("SPM", spm))
    return "\r".join(lines) + "\r"


def orm_o01(site_id: str, placer: str, patient: Patient, tests: Sequence[str], *,
            collected_at: datetime, control_id: str | None = None,
            condition: str = "room", spun: bool = False, now: datetime | None = None) -> str:
    """An ORM^O01 (v2.3 style): OBR-7 collection time, the tube's condition in an NTE."""
    now = now or datetime.now(UTC)
    control_id = control_id or f"ORM{uuid.uuid4().hex[:12].upper()}"
    lines = [
        _segment("MSH", {1: "^~\\&", 2: "COUNTY-HIS", 3: site_id, 4: "RDC", 5: "LAB",
                         6: hl7_time(now), 8: "ORM^O01", 9: control_id, 10: "P",
                         11: "2.3"}),
        _segment("PID", {1: "1", 3: patient.patient_id, 5: patient.name,
                         7: patient.birth_date, 8: patient.sex}),
        _segment("PV1", {1: "1", 2: "O", 19: patient.visit}),
    ]
    for n, code in enumerate(tests, 1):
        lines.append(_segment("ORC", {1: "NW", 2: placer, 12: "1001^WANG^Li"}))
        lines.append(_segment("OBR", {1: str(n), 2: placer, 4: f"{code}^{code}^L", 5: "R",
                                      7: hl7_time(collected_at)}))
        lines.append(_segment("NTE", {1: "1", 3: f"condition={condition};"
                                                 f"spun={'yes' if spun else 'no'}"}))
    return "\r".join(lines) + "\r"


def unescape(text: str) -> str:
    """HL7 escapes (``\\F\\`` ...) back to the characters."""
    for code, char in (("F", "|"), ("S", "^"), ("T", "&"), ("R", "~"), ("E", "\\")):
        text = text.replace(f"\\{code}\\", char)
    return text


def msa(ack: str) -> tuple[str, str, str]:
    """(MSA-1 code, MSA-2 control id, MSA-3 text, unescaped) of an ACK."""
    for seg in ack.replace("\n", "\r").split("\r"):
        if seg.startswith("MSA"):
            parts = [*seg.split("|"), "", "", ""]
            return parts[1], parts[2], unescape(parts[3])
    raise ValueError(f"no MSA segment in {ack[:200]!r}")


async def _send(host: str, port: int, messages: Sequence[bytes], timeout: float,
                ) -> list[str]:
    reader, writer = await asyncio.wait_for(open_hl7_connection(host, port), timeout)
    try:
        acks = []
        for raw in messages:
            writer.writeblock(raw)
            await writer.drain()
            block = await asyncio.wait_for(reader.readblock(), timeout)
            acks.append(block.decode("utf-8", errors="replace"))
        return acks
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def send_messages(host: str, port: int, messages: Sequence[str | bytes],
                  timeout: float = 30.0) -> list[str]:
    """Send messages over one MLLP connection, one after the other; their ACKs' text."""
    raw = [m.encode("utf-8") if isinstance(m, str) else m for m in messages]
    return asyncio.run(_send(host, port, raw, timeout))


def send_message(host: str, port: int, message: str | bytes, timeout: float = 30.0) -> str:
    """Send one message over MLLP and return the ACK's text."""
    return send_messages(host, port, [message], timeout)[0]


@dataclass
class Received:
    """One message the site got, and the ACK it answered."""

    raw: str
    control_id: str
    message_type: str
    peer: str
    ack: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class SiteReceiver:
    """The site's HL7 endpoint: an MLLP server that ACKs ``AA`` every message it can
    read (``AR`` one without MSH) and keeps it in :attr:`messages`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 facility: str = "COUNTY") -> None:
        self.host = host
        self.port = port
        self.facility = facility
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="hl7-site-receiver",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the site's MLLP receiver did not start")
        if self._error is not None:
            raise RuntimeError(f"the site's MLLP receiver failed: {self._error}")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                start_hl7_server(self._on_connect, self.host, self.port))
            self.port = int(self._server.sockets[0].getsockname()[1])
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        self._server.close()
        loop.run_until_complete(self._server.wait_closed())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._loop = None
        self._thread = None

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    async def _on_connect(self, reader: Any, writer: Any) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    block = await reader.readblock()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                raw = block.decode("utf-8", errors="replace")
                first = raw.replace("\n", "\r").split("\r", 1)[0]
                fields = first.split("|") if first.startswith("MSH") else []
                control = fields[9] if len(fields) > 9 else ""
                kind = fields[8] if len(fields) > 8 else ""
                code = "AA" if fields else "AR"
                ack = "\r".join([
                    _segment("MSH", {1: "^~\\&", 2: "COUNTY-LIS", 3: self.facility,
                                     4: fields[2] if len(fields) > 2 else "",
                                     5: fields[3] if len(fields) > 3 else "",
                                     6: hl7_time(datetime.now(UTC)),
                                     8: "ACK^" + (kind.split("^")[1] if "^" in kind else ""),
                                     9: f"A{uuid.uuid4().hex[:12]}", 10: "P", 11: "2.5.1"}),
                    f"MSA|{code}|{control}|" + ("" if fields else "no MSH segment")]) + "\r"
                with self._lock:
                    self.messages.append(Received(raw=raw, control_id=control,
                                                  message_type=kind,
                                                  peer=str(peer[0]) if peer else "",
                                                  ack=ack))
                writer.writeblock(ack.encode("utf-8"))
                await writer.drain()
        finally:
            writer.close()
