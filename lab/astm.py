"""ASTM for analyzers: E1381 (CLSI LIS01-A2) framing and E1394 (CLSI LIS2-A2) records.

Why written here: the ``astm`` package on PyPI is from 2013 and unmaintained, and what an
analyzer link needs is small.  The low level is sans-I/O (:class:`Receiver` takes bytes
and says what to answer; :func:`frames_for` and :class:`Sender` make and send frames), so
that it is tested without sockets and the asyncio server and the simulator's blocking
client share it.

E1381 in brief: the sender asks for the line with ENQ, the receiver answers ACK; each
frame is ``STX FN text ETB|ETX C1 C2 CR LF`` where FN is the frame number (1..7, 0, 1..)
and C1C2 the checksum (sum of the bytes from FN to ETB/ETX inclusive, mod 256, two upper
hex digits); at most 247 characters a frame, so a longer message is cut into
intermediate frames (ETB) and an end frame (ETX).  A frame with a bad checksum or an
unexpected number is answered NAK and sent again; after six failures the sender gives
up.  EOT ends the transfer.  A transfer that did not end with EOT, or was given up, is
discarded as a whole: the caller never sees half a run.

E1394: records ``H`` (header, which also declares the delimiters), ``P`` (patient),
``O`` (order: the specimen), ``R`` (result), ``C`` (comment), ``Q`` (query), ``L``
(terminator); fields, repeats and components are separated by the delimiters of the H
record, and escaped with ``&F&``, ``&S&``, ``&R&``, ``&E&`` inside values.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from core.errors import InvalidInput
from lab.results_in import ControlMeasurement, MeasuredResult, RunData

ENQ, ACK, NAK, EOT = b"\x05", b"\x06", b"\x15", b"\x04"
STX, ETX, ETB = b"\x02", b"\x03", b"\x17"
CR, LF = b"\r", b"\n"

#: The longest frame, control characters included (E1381 6.3.1.2).
MAX_FRAME = 247
#: The most text in one frame: 247 - STX - FN - ETB/ETX - C1 C2 - CR LF.
MAX_TEXT = MAX_FRAME - 7
#: A frame refused this many times makes the sender give up the transfer (E1381 6.5.1.2).
MAX_FAILURES = 6
#: Seconds the sender waits for ACK/NAK; seconds the receiver waits for the next frame.
SENDER_TIMEOUT_S = 15.0
RECEIVER_TIMEOUT_S = 30.0

#: ASTM specimen id prefix of a control measurement: "QC^<lot>^<level>".
QC_PREFIX = "QC"
#: Universal test id component 4 of a serum index result: "^^^SI^H".
SERUM_INDEX = "SI"


class FrameError(InvalidInput):
    """A frame that must be answered NAK (bad checksum, number or shape)."""


class TransferError(Exception):
    """The sender could not complete a transfer (refused, NAKed six times, timed out)."""


# --- E1381: frames ------------------------------------------------------------------
def checksum(body: bytes) -> bytes:
    """Two upper-case hex digits: the byte sum of FN..ETB/ETX inclusive, mod 256."""
    return f"{sum(body) % 256:02X}".encode("ascii")


def make_frame(fn: int, text: str, *, final: bool) -> bytes:
    """One frame: ``STX FN text ETB|ETX C1 C2 CR LF``."""
    raw = text.encode("latin-1")
    if len(raw) > MAX_TEXT:
        raise ValueError(f"frame text of {len(raw)} bytes exceeds {MAX_TEXT}")
    if any(b in raw for b in (STX + ETX + ETB + ENQ + EOT + LF)):
        raise ValueError("frame text may not contain STX, ETX, ETB, ENQ, EOT or LF")
    body = str(fn % 8).encode("ascii") + raw + (ETX if final else ETB)
    return STX + body + checksum(body) + CR + LF


def frames_for(records: Sequence[str], *, first_fn: int = 1) -> list[bytes]:
    """The frames of one transfer: each record a message (its text ends with CR), cut
    into intermediate frames (ETB) of at most :data:`MAX_TEXT` characters and an end
    frame (ETX); frame numbers run 1..7, 0, 1.. across the whole transfer."""
    frames: list[bytes] = []
    fn = first_fn
    for record in records:
        text = record + "\r"
        chunks = [text[i:i + MAX_TEXT] for i in range(0, len(text), MAX_TEXT)]
        for i, chunk in enumerate(chunks):
            frames.append(make_frame(fn, chunk, final=i == len(chunks) - 1))
            fn = (fn + 1) % 8
    return frames


@dataclass(frozen=True)
class Frame:
    fn: int
    text: str
    final: bool


def parse_frame(frame: bytes) -> Frame:
    """Check one frame (STX .. LF) and return its number, text and kind; FrameError
    names what is wrong (the receiver answers NAK)."""
    if len(frame) > MAX_FRAME:
        raise FrameError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    if len(frame) < 8 or frame[:1] != STX or frame[-2:] != CR + LF:
        raise FrameError("not a frame: STX FN text ETB|ETX C1 C2 CR LF expected")
    body, given = frame[1:-4], frame[-4:-2]
    if body[-1:] not in (ETX, ETB):
        raise FrameError("frame does not end with ETX or ETB before its checksum")
    if not body[:1].isdigit() or int(body[:1]) > 7:
        raise FrameError(f"frame number {body[:1]!r} is not 0-7")
    if given.upper() != checksum(body):
        raise FrameError(f"bad checksum {given.decode('latin-1')!r}, "
                         f"expected {checksum(body).decode()}")
    text = body[1:-1]
    if any(b in text for b in (STX + ETX + ETB + ENQ + EOT + LF)):
        raise FrameError("control character inside the frame text")
    return Frame(int(body[:1]), text.decode("latin-1"), body[-1:] == ETX)


@dataclass
class Receiver:
    """The receiving end of E1381, without I/O: :meth:`feed` the bytes that arrived and
    send back what it returns; completed transfers (their records) collect in
    :attr:`transfers`, discarded ones in :attr:`aborted` (the reason)."""

    max_failures: int = MAX_FAILURES
    transfers: list[list[str]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    #: NAKs answered (for the log and the tests).
    naks: int = 0
    _buf: bytearray = field(default_factory=bytearray)
    _active: bool = False
    _expected: int = 1
    _failures: int = 0
    _given_up: str = ""
    _message: list[str] = field(default_factory=list)
    _records: list[str] = field(default_factory=list)

    @property
    def in_transfer(self) -> bool:
        return self._active

    def feed(self, data: bytes) -> bytes:
        """Take ``data``; returns the bytes to answer (ACKs and NAKs), maybe empty."""
        self._buf.extend(data)
        out = bytearray()
        while self._buf:
            if not self._active:
                i = self._buf.find(ENQ)
                if i < 0:
                    self._buf.clear()  # line noise in the neutral state is ignored
                    break
                del self._buf[:i + 1]
                self._start()
                out += ACK
                continue
            head = self._buf[:1]
            if head == EOT:
                del self._buf[:1]
                self._end()
                continue
            if head == ENQ:  # a new request while one is open: start afresh
                del self._buf[:1]
                self._abort("the sender restarted the transfer (ENQ before EOT)")
                self._start()
                out += ACK
                continue
            if head != STX:
                del self._buf[:1]  # noise between frames
                continue
            end = self._buf.find(LF)
            cut = min((i for i in (self._buf.find(EOT), self._buf.find(ENQ)) if i > 0),
                      default=-1)
            if cut > 0 and (end < 0 or cut < end):
                # A frame cut short by EOT/ENQ (neither may occur inside one): the sender
                # gave up on it, so the transfer is incomplete and is discarded.
                del self._buf[:cut]
                self._given_up = self._given_up or "a frame was cut short by EOT or ENQ"
                continue
            if end < 0:
                if len(self._buf) > MAX_FRAME:
                    self._buf.clear()
                    out += self._nak("frame longer than 247 bytes without its end")
                break
            frame = bytes(self._buf[:end + 1])
            del self._buf[:end + 1]
            out += self._frame(frame)
        return bytes(out)

    def timeout(self) -> None:
        """No frame for :data:`RECEIVER_TIMEOUT_S`: the transfer is discarded."""
        self._buf.clear()  # a frame begun before the silence is not finished later
        if self._active:
            self._abort("timed out waiting for the next frame")

    def connection_lost(self) -> None:
        """The connection closed: an open transfer is discarded (no EOT, no run)."""
        self._buf.clear()
        if self._active:
            self._abort("connection closed before EOT")

    def _start(self) -> None:
        self._active = True
        self._expected = 1
        self._failures = 0
        self._given_up = ""
        self._message = []
        self._records = []

    def _frame(self, raw: bytes) -> bytes:
        if self._given_up:
            return NAK
        try:
            frame = parse_frame(raw)
        except FrameError as e:
            return self._nak(str(e))
        if frame.fn == (self._expected - 1) % 8 and (self._records or self._message):
            # The frame we already took, sent again because our ACK was lost.
            return ACK
        if frame.fn != self._expected:
            return self._nak(f"frame number {frame.fn}, expected {self._expected}")
        self._failures = 0
        self._expected = (self._expected + 1) % 8
        self._message.append(frame.text)
        if frame.final:
            text = "".join(self._message)
            self._message = []
            self._records.extend(r for r in text.split("\r") if r.strip("\n"))
        return ACK

    def _nak(self, reason: str) -> bytes:
        self.naks += 1
        self._failures += 1
        if self._failures >= self.max_failures:
            self._given_up = f"frame refused {self._failures} times, last: {reason}"
        return NAK

    def _end(self) -> None:
        if self._given_up:
            self._abort(self._given_up)
        elif self._message:
            self._abort("EOT inside a message (intermediate frame without its end frame)")
        else:
            if self._records:
                self.transfers.append(self._records)
            self._active = False
        self._records = []

    def _abort(self, reason: str) -> None:
        self.aborted.append(reason)
        self._active = False
        self._message = []
        self._records = []
        self._given_up = ""


#: Decide whether to spoil a frame before sending it: (frame index, attempt) -> bool.
Corruptor = Callable[[int, int], bool]


def _spoil(frame: bytes) -> bytes:
    """The same frame with a wrong checksum (tests and the simulator's fault option)."""
    good = frame[-4:-2]
    bad = b"00" if good != b"00" else b"01"
    return frame[:-4] + bad + frame[-2:]


@dataclass
class Sender:
    """The sending end of E1381 over a connected blocking socket."""

    sock: socket.socket
    timeout_s: float = SENDER_TIMEOUT_S
    max_failures: int = MAX_FAILURES
    corrupt: Corruptor | None = None
    naks: int = 0

    def send(self, records: Sequence[str]) -> None:
        """ENQ, every frame (again on NAK, up to :attr:`max_failures` times), EOT.

        TransferError when the receiver refuses the line, a frame is refused six
        times (EOT is still sent, so that the receiver discards the transfer) or an
        answer does not come in time.
        """
        self.sock.settimeout(self.timeout_s)
        self.sock.sendall(ENQ)
        reply = self._reply()
        if reply != ACK:
            raise TransferError(f"the receiver answered {reply!r} to ENQ, not ACK")
        for index, frame in enumerate(frames_for(records)):
            for attempt in range(1, self.max_failures + 1):
                spoil = self.corrupt is not None and self.corrupt(index, attempt)
                self.sock.sendall(_spoil(frame) if spoil else frame)
                reply = self._reply()
                if reply == ACK:
                    break
                if reply == EOT:  # receiver interrupt: stop, as E1381 allows
                    self.sock.sendall(EOT)
                    raise TransferError("the receiver asked to interrupt the transfer")
                self.naks += 1
            else:
                self.sock.sendall(EOT)
                raise TransferError(f"frame {index + 1} refused {self.max_failures} "
                                    f"times: transfer given up")
        self.sock.sendall(EOT)

    def _reply(self) -> bytes:
        try:
            data = self.sock.recv(1)
        except TimeoutError as e:
            raise TransferError(f"no answer within {self.timeout_s} s") from e
        if not data:
            raise TransferError("the receiver closed the connection")
        return data


# --- E1394: records -----------------------------------------------------------------
@dataclass(frozen=True)
class Delimiters:
    """Field, repeat, component and escape delimiters (from the H record)."""

    field: str = "|"
    repeat: str = "\\"
    component: str = "^"
    escape: str = "&"

    @classmethod
    def from_header(cls, header: str) -> Delimiters:
        if len(header) < 5 or header[0] != "H":
            raise InvalidInput("the first record is not an H record with delimiters")
        d = cls(field=header[1], repeat=header[2], component=header[3], escape=header[4])
        if len({d.field, d.repeat, d.component, d.escape}) != 4 or any(
                c.isalnum() or c in "\r\n" for c in (d.field, d.repeat, d.component,
                                                       d.escape)):
            raise InvalidInput(f"H record declares unusable delimiters {header[1:5]!r}")
        return d

    def header_field(self) -> str:
        return self.repeat + self.component + self.escape

    def escape_text(self, value: str) -> str:
        e = self.escape
        out = value.replace(e, f"{e}E{e}")
        return (out.replace(self.field, f"{e}F{e}").replace(self.repeat, f"{e}R{e}")
                .replace(self.component, f"{e}S{e}"))

    def unescape(self, value: str) -> str:
        e = self.escape
        if e not in value:
            return value
        table = {"F": self.field, "S": self.component, "R": self.repeat, "E": e}
        out: list[str] = []
        i = 0
        while i < len(value):
            if value[i] == e:
                j = value.find(e, i + 1)
                code = value[i + 1:j] if j > 0 else ""
                if code in table:
                    out.append(table[code])
                    i = j + 1
                    continue
                if len(code) >= 3 and code[0] == "X" and len(code) % 2 == 1:
                    try:
                        out.append(bytes.fromhex(code[1:]).decode("latin-1"))
                        i = j + 1
                        continue
                    except ValueError:
                        pass
            out.append(value[i])
            i += 1
        return "".join(out)


#: A field: its repeats, each a list of components (unescaped).
Field = list[list[str]]


@dataclass(frozen=True)
class Record:
    """One E1394 record; ``fields[0]`` is field 1 (the record type) as in the standard."""

    fields: tuple[Field, ...]

    @property
    def type(self) -> str:
        return self.get(1).upper()

    def get(self, n: int, component: int = 1, repeat: int = 1) -> str:
        """Field ``n`` (1-based, as the standard numbers them), component, repeat."""
        if n < 1 or n > len(self.fields):
            return ""
        reps = self.fields[n - 1]
        if repeat > len(reps) or repeat < 1:
            return ""
        comps = reps[repeat - 1]
        return comps[component - 1] if 0 < component <= len(comps) else ""

    def repeats(self, n: int) -> list[list[str]]:
        return self.fields[n - 1] if 0 < n <= len(self.fields) else []


def parse_record(text: str, d: Delimiters) -> Record:
    """Split one record's text at the delimiters and unescape every value."""
    raw_fields = text.split(d.field)
    fields: list[Field] = []
    for i, raw in enumerate(raw_fields):
        if i == 1 and raw_fields[0].upper() == "H":
            fields.append([[raw]])  # H-2 is the delimiter definition itself
            continue
        fields.append([[d.unescape(c) for c in rep.split(d.component)]
                       for rep in raw.split(d.repeat)])
    return Record(tuple(fields))


def build_record(values: Sequence[str | Sequence[str] | Sequence[Sequence[str]]],
                 d: Delimiters = Delimiters()) -> str:
    """One record from its fields (field 1 first): a field is a string, a list of
    components, or a list of repeats of component lists; every value is escaped."""
    out: list[str] = []
    for i, v in enumerate(values):
        if i == 1 and values[0] == "H":
            out.append(d.header_field())
        elif isinstance(v, str):
            out.append(d.escape_text(v))
        elif v and not isinstance(v[0], str):
            out.append(d.repeat.join(d.component.join(d.escape_text(c) for c in rep)
                                     for rep in v))
        else:
            out.append(d.component.join(d.escape_text(str(c)) for c in v))
    return d.field.join(out).rstrip(d.field)


def parse_records(records: Sequence[str]) -> list[Record]:
    """Every record of a transfer, with the delimiters its H record declares."""
    if not records:
        raise InvalidInput("empty ASTM transfer")
    d = Delimiters.from_header(records[0].lstrip("\n"))
    return [parse_record(r.lstrip("\n"), d) for r in records]


def parse_ts(value: str) -> datetime | None:
    """An ASTM date-time (YYYYMMDD[HHMM[SS]]), read as UTC (the center's analyzers run on
    UTC; the standard has no zone)."""
    v = value.strip()
    if not v:
        return None
    for fmt, n in (("%Y%m%d%H%M%S", 14), ("%Y%m%d%H%M", 12), ("%Y%m%d", 8)):
        if len(v) == n:
            try:
                return datetime.strptime(v, fmt).replace(tzinfo=UTC)
            except ValueError:
                break
    raise InvalidInput(f"bad ASTM date-time {value!r}: YYYYMMDD[HHMM[SS]] expected")


def format_ts(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def _value(text: str) -> float | None:
    """The numeric value of an analyzer result; None for a text result ("<0.01",
    "HEMOLYSED"): the text is kept, and the rules hold what they cannot judge."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _test_code(r: Record) -> str:
    """The test code of a universal test id ``^^^CODE`` (component 4), or the first
    non-empty component for analyzers that put it elsewhere."""
    code = r.get(3, 4).strip()
    if not code:
        first = r.repeats(3)[0] if r.repeats(3) else []
        code = next((c.strip() for c in first if c.strip()), "")
    return code.upper()


def parse_run(records: Sequence[str]) -> RunData:
    """A transfer's records → :class:`RunData`.

    H-3 (message control id) is the run code and H-5 component 1 the analyzer id; each O
    record's specimen id (O-3) is the center's accession, or ``QC^<lot>^<level>`` for a
    control; its R records follow.  An R whose universal test id is ``^^^SI^H|I|L``
    carries a serum index of the specimen.  InvalidInput names the record and field.
    """
    recs = parse_records(records)
    header = recs[0]
    analyzer_id = header.get(5).strip()
    run_code = header.get(3).strip()
    if not analyzer_id:
        raise InvalidInput("H record: sender name or id (H-5) is empty: which analyzer?")
    if not run_code:
        raise InvalidInput("H record: message control id (H-3, the run code) is empty")
    header_at = parse_ts(header.get(14)) or datetime.now(UTC)
    results: list[MeasuredResult] = []
    controls: list[ControlMeasurement] = []
    order: Record | None = None
    pending_hil: dict[str, dict[str, float]] = {}
    patient_rows: list[tuple[str, Record]] = []
    terminated = False
    for n, r in enumerate(recs[1:], 2):
        kind = r.type
        if kind == "O":
            order = r
            if not r.get(3).strip():
                raise InvalidInput(f"record {n} (O): specimen id (O-3) is empty")
        elif kind == "R":
            if order is None:
                raise InvalidInput(f"record {n} (R) comes before any O record")
            code = _test_code(r)
            if not code:
                raise InvalidInput(f"record {n} (R): no test code in R-3")
            at = parse_ts(r.get(13)) or parse_ts(order.get(8)) or header_at
            text = r.get(4).strip()
            where = f"record {n} (R {code})"
            if order.get(3) == QC_PREFIX:
                lot, level = order.get(3, 2), order.get(3, 3)
                value = _value(text)
                if value is None or not lot or not level.isdigit():
                    raise InvalidInput(f"{where}: a control needs QC^lot^level and a "
                                       f"numeric value, got {order.get(3)}^{lot}^{level} "
                                       f"= {text!r}")
                controls.append(ControlMeasurement(lot=lot, test_code=code,
                                                   level=int(level), value=value,
                                                   measured_at=at))
                continue
            accession = order.get(3).strip()
            if r.get(3, 4).upper() == SERUM_INDEX:
                index = r.get(3, 5).strip().upper()
                value = _value(text)
                if index not in ("H", "I", "L") or value is None:
                    raise InvalidInput(f"{where}: serum index ^^^SI^H|I|L with a number")
                pending_hil.setdefault(accession, {})[index] = value
                continue
            patient_rows.append((accession, r))
        elif kind in ("P", "C", "Q", "M"):
            continue  # patient data lives in the order; comments and queries: no result
        elif kind == "L":
            terminated = True
            break
        elif kind == "H":
            raise InvalidInput(f"record {n}: a second H record inside one transfer")
        else:
            raise InvalidInput(f"record {n}: unknown record type {kind!r}")
    if not terminated:
        raise InvalidInput("no terminator (L) record: the transfer is incomplete")
    for accession, r in patient_rows:
        code = _test_code(r)
        text = r.get(4).strip()
        flags = tuple(f for rep in r.repeats(7) for f in rep[:1] if f.strip())
        flags = tuple(f for f in flags if f.upper() != "N")
        at = parse_ts(r.get(13)) or header_at
        results.append(MeasuredResult(
            accession=accession, test_code=code, value=_value(text), value_text=text,
            units=r.get(5).strip(), flags=flags, measured_at=at,
            hil=pending_hil.get(accession) or None))
    return RunData(analyzer_id=analyzer_id, run_code=run_code, results=tuple(results),
                   controls=tuple(controls))


def build_run(run: RunData, *, at: datetime | None = None, software: str = "rdc-sim",
              d: Delimiters = Delimiters()) -> list[str]:
    """The records of one transfer for ``run`` (the simulator's side of parse_run):
    H, then per control and per specimen a P (patient sequence), an O and its R records,
    serum indices as ``^^^SI^H|I|L`` results, and L."""
    when = format_ts(at or datetime.now(UTC))
    recs = [build_record(["H", "", run.run_code, "", [run.analyzer_id, software, "1.0"],
                          "", "", "", "", "", "", "P", "LIS2-A2", when], d)]
    seq = 0

    def add_order(specimen: list[str], rows: list[list[str | list[str] | list[list[str]]]],
                  ) -> None:
        nonlocal seq
        seq += 1
        recs.append(build_record(["P", str(seq)], d))
        codes = sorted({str(row[2][3]) for row in rows
                        if isinstance(row[2], list) and row[2][3] != SERUM_INDEX})
        # O-3 specimen id, O-5 universal test ids, O-6 priority, O-26 report type.
        recs.append(build_record(["O", "1", specimen, "",
                                  [["", "", "", c] for c in codes], "R",
                                  *[""] * 19, "F"], d))
        for i, row in enumerate(rows, 1):
            row[1] = str(i)
            recs.append(build_record(row, d))

    by_control: dict[tuple[str, int], list[ControlMeasurement]] = {}
    for c in run.controls:
        by_control.setdefault((c.lot, c.level), []).append(c)
    for (lot, level), measured in by_control.items():
        add_order([QC_PREFIX, lot, str(level)],
                  [["R", "", ["", "", "", c.test_code], _num(c.value), "", "", "", "", "F",
                    "", "", "", format_ts(c.measured_at), run.analyzer_id]
                   for c in measured])
    by_specimen: dict[str, list[MeasuredResult]] = {}
    for m in run.results:
        by_specimen.setdefault(m.accession, []).append(m)
    for accession, items in by_specimen.items():
        rows: list[list[str | list[str] | list[list[str]]]] = []
        for m in items:
            flags: list[list[str]] = [[f] for f in m.flags] or [["N"]]
            rows.append(["R", "", ["", "", "", m.test_code], m.value_text, m.units, "",
                         flags, "", "F", "", "", "", format_ts(m.measured_at),
                         run.analyzer_id])
        hil = next((m.hil for m in items if m.hil), None)
        for index, value in sorted((hil or {}).items()):
            rows.append(["R", "", ["", "", "", SERUM_INDEX, index], _num(value), "", "",
                         [["N"]], "", "F", "", "", "", format_ts(items[0].measured_at),
                         run.analyzer_id])
        add_order([accession], rows)
    recs.append(build_record(["L", "1", "N"], d))
    return recs


def _num(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
