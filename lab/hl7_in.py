"""HL7 v2 orders from county sites (OML^O21, ORM^O01) read into an :class:`OrderRequest`,
and the ACK that answers every message.

Why hl7apy, and TOLERANT: hl7apy parses the ER7 text (escapes, repetitions, components)
and knows each segment's fields, but its STRICT structure check refuses messages that
county LIS send every day (ORM^O01 v2.3 without ORC-7, a free-text SPM-14).  So the
structure is hl7apy's and the content is checked here, field by field, each refusal
naming the segment and field that is wrong.

What a site sends (one order per message; every ORC carries the same placer order
number, ORC-2, with OBR-2 as the fallback):

- MSH-4 sending facility = the site id; MSH-10 control id (unique per site);
- PID-3 patient id (first repetition, first component), PID-5 name, PID-7 birth date
  (YYYYMMDD), PID-8 sex (M/F; anything else is U);
- PV1-19 visit number (optional: the cumulative report is per visit);
- ORC-12 ordering provider; OBR-4 test: the catalog code (``K^Potassium^L``) or a
  LOINC code with coding system ``LN``; OBR-5 priority (``S``/``STAT`` = stat);
- OML^O21: an SPM after each OBR: SPM-2 the site's tube id (tests with the same SPM-2
  share one tube), SPM-4 specimen type, SPM-17 collection time, SPM-15 special handling
  (HL7 table 0376: ``AMB`` room, ``REF`` refrigerated, ``FRZ``/``DFRZ``/``UFRZ`` frozen)
  and SPM-24 specimen condition (table 0493: ``CFU`` centrifuged = spun);
- SPM-4 is read for the record only: a tube's type and container are the catalog's
  for its tests (sites' local type codes vary); tests that need different tube types
  under one SPM-2 are refused by lab.orders;
- ORM^O01 (no SPM): OBR-7 collection time; the storage condition and spinning may be
  given in an NTE after the OBR as ``condition=refrigerated;spun=yes``; without it the
  tube is taken as kept at room temperature, unspun (the shortest stability windows,
  so a guess never releases a result that should have been held).

Times without an offset are UTC (the center's rule for naive times, core.timeutil).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from core.errors import InvalidInput
from lab.catalog import Catalog, Test
from lab.orders import OrderRequest, SpecimenRequest

#: Message types a site may send, with the ACK trigger that answers each.
ORDER_TYPES = {"OML^O21": "O21", "ORM^O01": "O01"}
#: HL7 table 0376 (special handling) -> the catalog's storage condition.
HANDLING = {"AMB": "room", "C37": "room", "CAMB": "room", "ROOM": "room",
            "REF": "refrigerated", "CREF": "refrigerated",
            "FRZ": "frozen", "CFRZ": "frozen", "DFRZ": "frozen", "UFRZ": "frozen"}
#: HL7 table 0493 (specimen condition): the code that says the tube was centrifuged.
SPUN = "CFU"
_DTM = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?"
                  r"([+-]\d{4})?\Z")


class MalformedMessage(InvalidInput):
    """The text is not an HL7 v2 message the lab can read at all (answered AR)."""


@dataclass(frozen=True)
class Header:
    """What the answer and the duplicate check need from MSH."""

    sending_application: str
    sending_facility: str
    message_type: str       # "OML^O21"
    control_id: str         # MSH-10
    version: str            # MSH-12


def normalise(raw: str) -> str:
    """Segments separated by CR only (files and some senders use LF or CRLF)."""
    text = raw.replace("\r\n", "\r").replace("\n", "\r").strip("\r \t\x00")
    return "\r".join(seg for seg in text.split("\r") if seg.strip())


def _parse(raw: str) -> Any:
    text = normalise(raw)
    if not text.startswith("MSH") or len(text) < 8:
        raise MalformedMessage("not an HL7 v2 message: it does not start with an MSH segment")
    try:
        return parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT,
                             find_groups=False)
    except Exception as e:  # hl7apy raises many unrelated types for bad text
        raise MalformedMessage(f"malformed HL7: {e}") from e


def _value(element: Any) -> str:
    try:
        return str(element.to_er7()).strip()
    except Exception:  # an absent field reads as an empty one
        return ""


def _field(segment: Any, index: int) -> str:
    """ER7 text of field ``index`` (1-based) of a segment, "" when absent."""
    name = f"{segment.name.lower()}_{index}"
    try:
        return _value(getattr(segment, name))
    except Exception:
        return ""


def _component(text: str, index: int, sep: str = "^") -> str:
    parts = text.split("~", 1)[0].split(sep)
    return parts[index - 1].strip() if len(parts) >= index else ""


def read_header(raw: str) -> Header:
    """MSH of ``raw``; :class:`MalformedMessage` when it cannot be read."""
    msg = _parse(raw)
    msh = msg.msh
    kind = _field(msh, 9)
    header = Header(sending_application=_component(_field(msh, 3), 1),
                    sending_facility=_component(_field(msh, 4), 1),
                    message_type="^".join(kind.split("^")[:2]),
                    control_id=_field(msh, 10), version=_field(msh, 12))
    if not header.control_id:
        raise MalformedMessage("MSH-10 (message control id) is empty")
    if len(header.control_id) > 64:
        raise MalformedMessage("MSH-10 (message control id) is longer than 64 characters")
    if not header.message_type or "^" not in header.message_type:
        raise MalformedMessage("MSH-9 (message type) is missing or has no trigger event")
    return header


def parse_dtm(text: str, where: str) -> datetime:
    """An HL7 DTM (``YYYYMMDD[HH[MM[SS]]][+ZZZZ]``) as an aware UTC datetime."""
    m = _DTM.match(text)
    if not m:
        raise InvalidInput(f"{where}: {text!r} is not an HL7 date/time (YYYYMMDDHHMMSS)")
    year, month, day, hour, minute, second, offset = m.groups()
    tz = UTC
    if offset:
        sign = -1 if offset[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    try:
        moment = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                          int(second or 0), tzinfo=tz)
    except ValueError as e:
        raise InvalidInput(f"{where}: {text!r} is not a valid date/time ({e})") from e
    return moment.astimezone(UTC)


def _resolve_test(catalog: Catalog, obr4: str, where: str) -> Test:
    code = _component(obr4, 1)
    system = _component(obr4, 3).upper()
    if not code:
        raise InvalidInput(f"{where}: OBR-4 (universal service id) names no test")
    if system == "LN":
        found = catalog.by_loinc(code)
        if found is None:
            raise InvalidInput(f"{where}: OBR-4 LOINC {code!r} is not in the test catalog "
                               f"{catalog.version}")
        return found
    return catalog.test(code)


def _nte_conditions(text: str, where: str) -> tuple[str | None, bool | None]:
    condition: str | None = None
    spun: bool | None = None
    for part in text.split(";"):
        key, _, value = part.partition("=")
        key, value = key.strip().lower(), value.strip().lower()
        if key == "condition":
            if value not in ("room", "refrigerated", "frozen"):
                raise InvalidInput(f"{where}: NTE condition {value!r}: expected room, "
                                   "refrigerated or frozen")
            condition = value
        elif key == "spun":
            if value not in ("yes", "no", "true", "false", "y", "n"):
                raise InvalidInput(f"{where}: NTE spun {value!r}: expected yes or no")
            spun = value in ("yes", "true", "y")
    return condition, spun


@dataclass
class _Requested:
    """One OBR: its test and what its SPM (or NTE) said about the tube."""

    test: Test
    collected_at: datetime | None
    tube_id: str = ""
    condition: str | None = None
    spun: bool | None = None


def _read_spm(seg: Any, item: _Requested, where: str) -> None:
    item.tube_id = _component(_field(seg, 2), 1)
    collected_text = _component(_field(seg, 17), 1)
    if collected_text:
        item.collected_at = parse_dtm(collected_text, f"{where} SPM-17 (collection time)")
    handling = _component(_field(seg, 15), 1).upper()
    if handling:
        if handling not in HANDLING:
            raise InvalidInput(f"{where} SPM-15 special handling {handling!r} is not one of "
                               f"{', '.join(sorted(HANDLING))} (HL7 table 0376)")
        item.condition = HANDLING[handling]
    conditions = [_component(rep, 1).upper() for rep in _field(seg, 24).split("~")]
    if SPUN in conditions:
        item.spun = True


def _tubes(items: list[_Requested]) -> tuple[SpecimenRequest, ...]:
    """Tests grouped into tubes: by the site's tube id (SPM-2), else by specimen type."""
    groups: dict[str, list[_Requested]] = {}
    for item in items:
        key = f"spm:{item.tube_id}" if item.tube_id else f"type:{item.test.specimen_type}"
        groups.setdefault(key, []).append(item)
    out = []
    for group in groups.values():
        first = group[0]
        out.append(SpecimenRequest(
            site_specimen_id=first.tube_id, specimen_type=first.test.specimen_type,
            collected_at=next((i.collected_at for i in group if i.collected_at), None),
            condition=next((i.condition for i in group if i.condition), "room"),
            spun=any(i.spun for i in group),
            tests=tuple(i.test.code for i in group)))
    return tuple(out)


def parse_order(raw: str, catalog: Catalog) -> OrderRequest:
    """The order in an OML^O21 or ORM^O01 message; InvalidInput naming the bad field.

    Unknown test codes raise the catalog's own error (lab.catalog.UnknownTest).
    """
    msg = _parse(raw)
    header = read_header(raw)
    if header.message_type not in ORDER_TYPES:
        raise MalformedMessage(f"MSH-9: {header.message_type} is not an order the lab "
                               f"takes (expected {' or '.join(ORDER_TYPES)})")
    segments = list(msg.children)
    pid = next((s for s in segments if s.name == "PID"), None)
    if pid is None:
        raise InvalidInput("PID segment missing")
    patient_id = _component(_field(pid, 3), 1)
    if not patient_id:
        raise InvalidInput("PID-3 (patient identifier) is empty")
    patient_name = "^".join(_field(pid, 5).split("~", 1)[0].split("^")[:2]).strip("^")
    birth = _field(pid, 7)[:8]
    if birth:
        parse_dtm(birth, "PID-7 (birth date)")
    sex = _field(pid, 8).upper()[:1]
    pv1 = next((s for s in segments if s.name == "PV1"), None)
    visit = _component(_field(pv1, 19), 1) if pv1 is not None else ""

    placer = provider = orc_placer = ""
    priority = "routine"
    items: list[_Requested] = []
    for seg in segments:
        where = f"OBR #{len(items)}"
        if seg.name == "ORC":
            orc_placer = _component(_field(seg, 2), 1)
            provider = provider or _field(seg, 12)
        elif seg.name == "OBR":
            where = f"OBR #{len(items) + 1}"
            this_placer = orc_placer or _component(_field(seg, 2), 1)
            if not this_placer:
                raise InvalidInput(f"{where}: no placer order number (ORC-2 or OBR-2)")
            if placer and this_placer != placer:
                raise InvalidInput(f"{where}: placer order number {this_placer!r} differs "
                                   f"from {placer!r}: send one order per message")
            placer = this_placer
            provider = provider or _field(seg, 16)
            if _component(_field(seg, 5), 1).upper() in ("S", "STAT"):
                priority = "stat"
            collected_text = _field(seg, 7)
            items.append(_Requested(
                test=_resolve_test(catalog, _field(seg, 4), where),
                collected_at=(parse_dtm(collected_text, f"{where} OBR-7 (collection time)")
                              if collected_text else None)))
        elif seg.name == "SPM" and items:
            _read_spm(seg, items[-1], f"{where}:")
        elif seg.name == "NTE" and items:
            condition, spun = _nte_conditions(_field(seg, 3), f"NTE after {where}")
            items[-1].condition = condition or items[-1].condition
            items[-1].spun = spun if spun is not None else items[-1].spun
    if not items:
        raise InvalidInput("no ORC/OBR: the message orders nothing")
    return OrderRequest(
        site_id=header.sending_facility, placer_order_number=placer, patient_id=patient_id,
        patient_name=patient_name, sex=sex if sex in ("M", "F") else "U", birth_date=birth,
        visit_number=visit, ordering_provider=provider.replace("^", " ").strip(),
        priority=priority, specimens=_tubes(items))


def _escape(text: str) -> str:
    text = re.sub(r"[\x00-\x1f\x7f]", " ", text)
    table = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
    return "".join(table.get(ch, ch) for ch in text)[:200]


#: HL7 table 0357 codes the ACK's ERR-3 carries.
ERR_CODES = {"AR-malformed": ("100", "Segment sequence error"),
             "AR-type": ("200", "Unsupported message type"),
             "AR-site": ("204", "Unknown key identifier"),
             "AR-duplicate": ("205", "Duplicate key identifier"),
             "AE": ("207", "Application internal error"),
             "AE-code": ("103", "Table value not found"),
             "AE-field": ("101", "Required field missing"),
             "AE-duplicate": ("205", "Duplicate key identifier")}


def build_ack(header: Header | None, code: str, text: str = "", *,
              error: str | None = None, now: datetime | None = None) -> str:
    """The ACK for a message: MSA-1 ``code``, MSA-2 its control id, MSA-3 ``text``; an
    ERR segment (table 0357 code, severity E, the reason in ERR-8) unless accepted."""
    now = now or datetime.now(UTC)
    trigger = ORDER_TYPES.get(header.message_type, "") if header else ""
    if header is not None and not trigger and "^" in header.message_type:
        trigger = header.message_type.split("^")[1]
    to_app = _escape(header.sending_application) if header else ""
    to_fac = _escape(header.sending_facility) if header else ""
    control = _escape(header.control_id) if header else ""
    version = "2.5.1"
    lines = [f"MSH|^~\\&|RDC|LAB|{to_app}|{to_fac}|{now.strftime('%Y%m%d%H%M%S')}+0000||"
             f"ACK^{trigger}^ACK|ACK-{uuid.uuid4().hex[:16]}|P|{version}",
             f"MSA|{code}|{control}|{_escape(text)}"]
    if code != "AA":
        err_code, err_name = ERR_CODES.get(error or code, ERR_CODES["AE"])
        lines.append(f"ERR|||{err_code}^{err_name}^HL70357|E||||{_escape(text)}")
    return "\r".join(lines) + "\r"
