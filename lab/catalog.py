"""The lab's test catalog: what sites may order, with every limit the lab's rules read.

The catalog is a versioned TOML file (``lab/catalog.toml``, or ``RDC_LAB_CATALOG``): the
schema is in the shipped file's header.  It is read strictly: an unknown key, a missing
field, a wrong type, an overlapping reference range or a LOINC code with a bad check digit
refuses the whole file with a message naming the file, the test and the field, because a
silently ignored typo in a critical limit is a patient-safety bug, not a style issue.

Loaded catalogs are cached by (path, modification time, size), so an edited file is read
again on the next call without restarting anything.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from core.errors import InvalidInput
from core.settings import Settings, get_settings
from lab.errors import CatalogError, UnknownTest

#: The catalog shipped with the center.
SHIPPED_CATALOG = Path(__file__).with_name("catalog.toml")
#: Storage conditions and the stability keys the catalog may give (hours).
CONDITIONS = ("room", "refrigerated", "frozen")
STABILITY_KEYS = ("room_spun", "room_unspun", "refrigerated_spun", "refrigerated_unspun",
                  "frozen")
HIL_KEYS = ("H", "I", "L")
SEXES = ("M", "F", "*")
PROTOCOLS = ("astm", "hl7")
_CODE = re.compile(r"[A-Z][A-Z0-9]{0,15}\Z")
_ANALYZER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
_LOINC = re.compile(r"(\d{1,7})-(\d)\Z")


@dataclass(frozen=True)
class RefRange:
    """One reference interval: for ``sex`` ("M", "F" or "*") and ages [min, max) years."""

    sex: str
    age_min_y: float
    age_max_y: float
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Delta:
    """A change larger than ``abs`` (units) AND ``pct`` (%) within ``window_h`` hours."""

    abs: float
    pct: float
    window_h: float


@dataclass(frozen=True)
class Test:
    code: str
    name: str
    loinc: str
    loinc_name: str
    section: str
    units: str
    decimals: int
    specimen_type: str
    container: str
    measuring_low: float | None
    measuring_high: float | None
    critical_low: float | None
    critical_high: float | None
    ranges: tuple[RefRange, ...]
    #: Hours from collection for every key of STABILITY_KEYS (0: not stable that way).
    stability: Mapping[str, float]
    delta: Delta | None
    #: The highest H/I/L index the result tolerates (absent: not affected).
    hil: Mapping[str, float]

    def reference_range(self, sex: str, age_y: float | None) -> RefRange | None:
        """The interval for this patient: a range of the patient's own sex covering the
        age first, then one for "*".  With no age, a range is returned only when every
        age would get the same limits (an adult's range is not guessed for a patient of
        unknown age, who may be a child)."""
        if age_y is None:
            found = [self.reference_range(sex, r.age_min_y) for r in self.ranges]
            limits = {None if r is None else (r.low, r.high) for r in found}
            return found[0] if len(limits) == 1 and found[0] is not None else None
        for wanted in ((sex,) if sex in ("M", "F") else ()) + ("*",):
            for r in self.ranges:
                if r.sex == wanted and r.age_min_y <= age_y < r.age_max_y:
                    return r
        return None


@dataclass(frozen=True)
class Analyzer:
    id: str
    name: str
    protocol: str
    #: Peer addresses (or networks) the analyzer may connect from.
    addresses: tuple[str, ...]
    tests: tuple[str, ...]

    def allows(self, peer_ip: str) -> bool:
        try:
            peer = ipaddress.ip_address(peer_ip.split("%", 1)[0])
        except ValueError:
            return False
        return any(peer in ipaddress.ip_network(a, strict=False) for a in self.addresses)


@dataclass(frozen=True)
class Catalog:
    version: str
    title: str
    tests: Mapping[str, Test]
    analyzers: Mapping[str, Analyzer]
    #: sha256 of the file as loaded (results record the version; this pins the bytes).
    sha256: str
    source: str = ""

    def test(self, code: str) -> Test:
        try:
            return self.tests[code]
        except KeyError:
            raise UnknownTest(f"unknown test code {code!r}: not in the lab catalog "
                              f"{self.version} (known: {', '.join(sorted(self.tests))})"
                              ) from None

    def by_loinc(self, loinc: str) -> Test | None:
        for t in self.tests.values():
            if t.loinc == loinc:
                return t
        return None

    def analyzer_for_peer(self, analyzer_id: str, peer_ip: str) -> Analyzer:
        analyzer = self.analyzers.get(analyzer_id)
        if analyzer is None:
            raise InvalidInput(f"unknown analyzer {analyzer_id!r}: not in the lab catalog "
                               f"{self.version}")
        if not analyzer.allows(peer_ip):
            raise InvalidInput(f"analyzer {analyzer_id} may not connect from {peer_ip} "
                               f"(allowed: {', '.join(analyzer.addresses)})")
        return analyzer


# --------------------------------------------------------------------------- validation


def loinc_check_digit(number: str) -> int:
    """LOINC's mod-10 (Luhn) check digit of the part before the hyphen."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return (10 - total % 10) % 10


class _Table:
    """One TOML table being read: every key taken is checked, leftovers are refused."""

    def __init__(self, where: str, raw: object) -> None:
        if not isinstance(raw, dict):
            raise CatalogError(f"{where}: must be a table, found {type(raw).__name__}")
        self.where = where
        self.raw: dict[str, Any] = dict(raw)
        self.taken: set[str] = set()

    def fail(self, key: str, message: str) -> CatalogError:
        return CatalogError(f"{self.where}: field {key!r} {message}")

    def _get(self, key: str, required: bool) -> Any:
        self.taken.add(key)
        if key not in self.raw:
            if required:
                raise self.fail(key, "is required")
            return None
        return self.raw[key]

    def text(self, key: str, *, required: bool = True, max_len: int = 200,
             pattern: re.Pattern[str] | None = None, empty_ok: bool = False) -> str:
        value = self._get(key, required)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, found {value!r}")
        if not value.strip() and not empty_ok:
            raise self.fail(key, "must not be empty")
        if len(value) > max_len:
            raise self.fail(key, f"is longer than {max_len} characters: {value!r}")
        if pattern is not None and not pattern.match(value):
            raise self.fail(key, f"has the wrong form: {value!r}")
        return value

    def number(self, key: str, *, required: bool = True, minimum: float | None = None,
               ) -> float | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, found {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be >= {minimum:g}, found {value!r}")
        return float(value)

    def integer(self, key: str, *, low: int, high: int) -> int:
        value = self._get(key, True)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"must be an integer from {low} to {high}, found {value!r}")
        return value

    def array(self, key: str) -> list[Any]:
        value = self._get(key, True)
        if not isinstance(value, list):
            raise self.fail(key, f"must be an array, found {value!r}")
        return value

    def sub(self, key: str, *, required: bool = True) -> _Table | None:
        value = self._get(key, required)
        if value is None:
            return None
        return _Table(f"{self.where}.{key}", value)

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.taken)
        if unknown:
            raise CatalogError(f"{self.where}: unknown field(s) {', '.join(unknown)}")


def _pair(t: _Table, low_key: str, high_key: str, low: float | None,
          high: float | None) -> None:
    if low is not None and high is not None and low >= high:
        raise t.fail(low_key, f"({low:g}) must be below {high_key!r} ({high:g})")


def _ranges(t: _Table) -> tuple[RefRange, ...]:
    raw = t.array("ranges")
    if not raw:
        raise t.fail("ranges", "must list at least one reference range")
    ranges: list[RefRange] = []
    for i, item in enumerate(raw):
        r = _Table(f"{t.where}.ranges[{i}]", item)
        sex = r.text("sex", max_len=1)
        if sex not in SEXES:
            raise r.fail("sex", f"must be one of {', '.join(SEXES)}, found {sex!r}")
        age_min = r.number("age_min_y", minimum=0)
        age_max = r.number("age_max_y", minimum=0)
        assert age_min is not None and age_max is not None
        _pair(r, "age_min_y", "age_max_y", age_min, age_max)
        low, high = r.number("low", required=False), r.number("high", required=False)
        if low is None and high is None:
            raise r.fail("low", "or 'high' is required (a range with no limit)")
        _pair(r, "low", "high", low, high)
        r.done()
        for other in ranges:
            if other.sex == sex and age_min < other.age_max_y and other.age_min_y < age_max:
                raise CatalogError(
                    f"{r.where}: ages [{age_min:g}, {age_max:g}) for sex {sex!r} overlap "
                    f"another range's [{other.age_min_y:g}, {other.age_max_y:g})")
        ranges.append(RefRange(sex, age_min, age_max, low, high))
    return tuple(ranges)


def _stability(t: _Table) -> Mapping[str, float]:
    s = t.sub("stability")
    assert s is not None
    hours = {key: s.number(key, required=False, minimum=0) or 0.0 for key in STABILITY_KEYS}
    s.done()
    if not any(hours.values()):
        raise t.fail("stability", "gives no condition in which the specimen is stable")
    return MappingProxyType(hours)


def _delta(t: _Table) -> Delta | None:
    d = t.sub("delta", required=False)
    if d is None:
        return None
    values = [d.number(k, minimum=0) for k in ("abs", "pct", "window_h")]
    d.done()
    abs_, pct, window = (float(v or 0.0) for v in values)
    for key, value in (("abs", abs_), ("pct", pct), ("window_h", window)):
        if value <= 0:
            raise d.fail(key, f"must be > 0, found {value:g}")
    return Delta(abs_, pct, window)


def _hil(t: _Table) -> Mapping[str, float]:
    h = t.sub("hil")
    assert h is not None
    limits = {k: h.number(k, required=False, minimum=0) for k in HIL_KEYS}
    h.done()
    return MappingProxyType({k: v for k, v in limits.items() if v is not None})


def _test(where: str, raw: object) -> Test:
    t = _Table(where, raw)
    code = t.text("code", max_len=16, pattern=_CODE)
    t.where = f"{where} ({code})"
    loinc = t.text("loinc", max_len=16, pattern=_LOINC)
    number, check = loinc.split("-")
    if loinc_check_digit(number) != int(check):
        raise t.fail("loinc", f"{loinc!r} has a wrong check digit (expected "
                              f"{number}-{loinc_check_digit(number)})")
    measuring = (t.number("measuring_low", required=False),
                 t.number("measuring_high", required=False))
    critical = (t.number("critical_low", required=False),
                t.number("critical_high", required=False))
    _pair(t, "measuring_low", "measuring_high", *measuring)
    _pair(t, "critical_low", "critical_high", *critical)
    test = Test(
        code=code, name=t.text("name"), loinc=loinc, loinc_name=t.text("loinc_name", max_len=300),
        section=t.text("section", max_len=32), units=t.text("units", max_len=16),
        decimals=t.integer("decimals", low=0, high=6),
        specimen_type=t.text("specimen_type", max_len=32),
        container=t.text("container", max_len=32),
        measuring_low=measuring[0], measuring_high=measuring[1],
        critical_low=critical[0], critical_high=critical[1], ranges=_ranges(t),
        stability=_stability(t), delta=_delta(t), hil=_hil(t))
    t.done()
    return test


def _analyzer(where: str, raw: object, tests: Mapping[str, Test]) -> Analyzer:
    t = _Table(where, raw)
    aid = t.text("id", max_len=32, pattern=_ANALYZER_ID)
    t.where = f"{where} ({aid})"
    protocol = t.text("protocol", max_len=8)
    if protocol not in PROTOCOLS:
        raise t.fail("protocol", f"must be one of {', '.join(PROTOCOLS)}, found {protocol!r}")
    addresses = t.array("addresses")
    if not addresses:
        raise t.fail("addresses", "must list at least one address the analyzer connects from")
    for a in addresses:
        try:
            ipaddress.ip_network(a, strict=False)
        except (TypeError, ValueError):
            raise t.fail("addresses", f"has {a!r}, which is not an IP address or network"
                         ) from None
    codes = t.array("tests")
    if not codes:
        raise t.fail("tests", "must list at least one test")
    for c in codes:
        if c not in tests:
            raise t.fail("tests", f"names {c!r}, which is not a test of this catalog")
    if len(set(codes)) != len(codes):
        raise t.fail("tests", "lists a test twice")
    analyzer = Analyzer(id=aid, name=t.text("name"), protocol=protocol,
                        addresses=tuple(addresses), tests=tuple(codes))
    t.done()
    return analyzer


def parse_catalog(data: bytes, source: str) -> Catalog:
    """Validate the catalog text; every mistake names ``source``, the test and the field."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise CatalogError(f"{source}: not valid UTF-8 TOML: {e}") from e
    top = _Table(source, doc)
    top.taken.add("catalog")
    if "catalog" not in doc:
        raise CatalogError(f"{source}: the [catalog] table (version, title) is required")
    head = _Table(f"{source}: [catalog]", doc["catalog"])
    version = head.text("version", max_len=32)
    title = head.text("title")
    head.done()
    tests: dict[str, Test] = {}
    loincs: dict[str, str] = {}
    raw_tests = top.array("tests")
    if not raw_tests:
        raise top.fail("tests", "must list at least one test")
    for i, raw in enumerate(raw_tests):
        test = _test(f"{source}: tests[{i}]", raw)
        if test.code in tests:
            raise CatalogError(f"{source}: tests[{i}]: test code {test.code!r} appears twice")
        if test.loinc in loincs:
            raise CatalogError(f"{source}: tests[{i}] ({test.code}): LOINC {test.loinc} is "
                               f"already test {loincs[test.loinc]}")
        tests[test.code] = test
        loincs[test.loinc] = test.code
    analyzers: dict[str, Analyzer] = {}
    for i, raw in enumerate(top.array("analyzers")):
        analyzer = _analyzer(f"{source}: analyzers[{i}]", raw, tests)
        if analyzer.id in analyzers:
            raise CatalogError(f"{source}: analyzers[{i}]: analyzer id {analyzer.id!r} "
                               "appears twice")
        analyzers[analyzer.id] = analyzer
    top.done()
    measured = {c for a in analyzers.values() for c in a.tests}
    orphans = sorted(set(tests) - measured)
    if orphans:
        raise CatalogError(f"{source}: test(s) {', '.join(orphans)} are on no analyzer: "
                           "they could be ordered but never measured")
    return Catalog(version=version, title=title, tests=MappingProxyType(tests),
                   analyzers=MappingProxyType(analyzers),
                   sha256=hashlib.sha256(data).hexdigest(), source=source)


_cache: dict[Path, tuple[tuple[int, int], Catalog]] = {}


def load_catalog(path: Path) -> Catalog:
    """Load and validate the catalog at ``path`` (cached by modification time and size)."""
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        hit = _cache.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        data = path.read_bytes()
    except OSError as e:
        raise CatalogError(f"lab catalog {path} cannot be read: {e.strerror or e}") from e
    catalog = parse_catalog(data, str(path))
    _cache[path] = (stamp, catalog)
    return catalog


def get_catalog(settings: Settings | None = None) -> Catalog:
    """The center's catalog: ``settings.lab_catalog``, or the shipped one."""
    path = (settings or get_settings()).lab_catalog or SHIPPED_CATALOG
    return load_catalog(Path(path))


def age_years(birth_date: str, at: datetime) -> float | None:
    """Age in years at ``at`` from an HL7 date "YYYYMMDD" (a longer DTM is cut to the
    date); completed years plus the fraction of the current year, so a patient is 18.0 on
    their 18th birthday.  None when the date is missing, invalid or after ``at``."""
    digits = birth_date.strip()[:8]
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        born = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None
    today = at.date()
    if born > today:
        return None

    def birthday(year: int) -> date:
        try:
            return born.replace(year=year)
        except ValueError:  # 29 February in a common year: 1 March
            return date(year, 3, 1)

    years = today.year - born.year
    if birthday(today.year) > today:
        years -= 1
    last, nxt = birthday(born.year + years), birthday(born.year + years + 1)
    return years + (today - last).days / (nxt - last).days
