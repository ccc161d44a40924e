"""The lab's test catalog: the shipped file loads with the numbers the rules read, and a
broken catalog is refused whole with a message naming the file, the test and the field
(a typo in a critical limit must stop the center, not be ignored)."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.errors import ConfigurationError, InvalidInput
from core.settings import Settings
from lab.catalog import (
    SHIPPED_CATALOG,
    age_years,
    get_catalog,
    load_catalog,
    loinc_check_digit,
)
from lab.errors import CatalogError, UnknownTest

SHIPPED = SHIPPED_CATALOG.read_text(encoding="utf-8")
K_BLOCK_START = SHIPPED.index('code = "K"')


def test_the_shipped_catalog_loads_with_every_test_and_analyzer() -> None:
    cat = load_catalog(SHIPPED_CATALOG)
    assert cat.version == "2026.12-1"
    assert set(cat.tests) == {"K", "NA", "CL", "HCO3", "CREA", "GLU", "TNI", "HGB", "WBC",
                              "PLT", "MCV", "INR"}
    k = cat.test("K")
    assert (k.loinc, k.units, k.decimals, k.critical_low, k.critical_high) == (
        "2823-3", "mmol/L", 1, 2.8, 6.2)
    assert dict(k.stability) == {"room_spun": 168, "room_unspun": 4, "refrigerated_spun": 168,
                                 "refrigerated_unspun": 0, "frozen": 8760}
    assert k.delta is not None and (k.delta.abs, k.delta.pct, k.delta.window_h) == (1, 20, 72)
    assert dict(k.hil) == {"H": 50, "I": 600, "L": 1000}
    assert dict(cat.test("HGB").hil) == {}
    # A key missing from a test's stability table means 0 h (not stable that way).
    assert cat.test("HGB").stability["frozen"] == 0
    assert cat.by_loinc("718-7") is cat.test("HGB")
    assert cat.by_loinc("0000-0") is None
    assert cat.analyzers["CHEM1"].protocol == "astm"
    assert cat.analyzers["HEME1"].tests == ("HGB", "WBC", "PLT", "MCV", "INR")
    assert re.fullmatch(r"[0-9a-f]{64}", cat.sha256)
    # Every LOINC code of the shipped catalog carries a correct check digit.
    for t in cat.tests.values():
        number, check = t.loinc.split("-")
        assert loinc_check_digit(number) == int(check), t.code


def test_reference_ranges_by_sex_and_age() -> None:
    cat = load_catalog(SHIPPED_CATALOG)
    crea, hgb, tni = cat.test("CREA"), cat.test("HGB"), cat.test("TNI")
    assert (crea.reference_range("M", 40.0).low, crea.reference_range("M", 40.0).high) == (  # type: ignore[union-attr]
        57, 111)
    assert crea.reference_range("F", 40.0).high == 81  # type: ignore[union-attr]
    # Ages are [min, max): 17.99 is a child, 18.0 an adult.
    assert crea.reference_range("F", 17.99).high == 62  # type: ignore[union-attr]
    assert crea.reference_range("F", 18.0).high == 81  # type: ignore[union-attr]
    # Sex unknown: only "*" ranges apply; creatinine has none for adults.
    assert crea.reference_range("U", 40.0) is None
    assert hgb.reference_range("U", 40.0).low == 115  # type: ignore[union-attr]
    # The patient's own sex first, then "*".
    assert hgb.reference_range("M", 40.0).low == 130  # type: ignore[union-attr]
    assert tni.reference_range("F", 60.0).high == 16  # type: ignore[union-attr]
    assert tni.reference_range("U", 60.0).high == 26  # type: ignore[union-attr]
    # No age: a range only when every age gets the same limits.
    assert cat.test("NA").reference_range("F", None).low == 137  # type: ignore[union-attr]
    assert tni.reference_range("M", None).high == 34  # type: ignore[union-attr]
    assert crea.reference_range("F", None) is None
    assert hgb.reference_range("M", None) is None
    assert cat.test("K").reference_range("M", 250.0) is None


def test_age_in_years_from_an_hl7_birth_date() -> None:
    at = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    assert age_years("20080301", at) == 18.0
    assert 17.99 < age_years("20080302", at) < 18.0  # type: ignore[operator]
    assert age_years("19800101120000", at) == pytest.approx(46 + 59 / 365)
    assert 25.99 < age_years("20000229", datetime(2026, 2, 28, tzinfo=UTC)) < 26  # type: ignore[operator]
    for bad in ("", "1980", "19801301", "abcdefgh", "20300101"):
        assert age_years(bad, at) is None, bad


def test_unknown_test_and_analyzer_peers_are_refused_by_name() -> None:
    cat = load_catalog(SHIPPED_CATALOG)
    with pytest.raises(UnknownTest, match=r"unknown test code 'XYZ'.*known: CL, CREA"):
        cat.test("XYZ")
    assert issubclass(UnknownTest, InvalidInput)
    assert cat.analyzer_for_peer("CHEM1", "127.0.0.1").id == "CHEM1"
    assert cat.analyzer_for_peer("HEME1", "::1").id == "HEME1"
    with pytest.raises(InvalidInput, match=r"CHEM1 may not connect from 10\.0\.0\.5"):
        cat.analyzer_for_peer("CHEM1", "10.0.0.5")
    with pytest.raises(InvalidInput, match="unknown analyzer 'CHEM9'"):
        cat.analyzer_for_peer("CHEM9", "127.0.0.1")
    with pytest.raises(InvalidInput, match="may not connect from not-an-ip"):
        cat.analyzer_for_peer("CHEM1", "not-an-ip")


def _broken(tmp_path: Path, old: str, new: str, *, in_k: bool = True) -> Path:
    """The shipped catalog with one edit (in test K's block when ``in_k``)."""
    start = K_BLOCK_START if in_k else 0
    at = SHIPPED.index(old, start)
    path = tmp_path / "catalog.toml"
    path.write_text(SHIPPED[:at] + new + SHIPPED[at + len(old):], encoding="utf-8")
    return path


@pytest.mark.parametrize(("old", "new", "message"), [
    ('units = "mmol/L"', "", r"tests\[0\] \(K\): field 'units' is required"),
    ('decimals = 1', 'decimals = "1"', r"tests\[0\] \(K\): field 'decimals' must be an "
                                      r"integer from 0 to 6, found '1'"),
    ('critical_high = 6.2', 'critical_high = 2.0',
     r"tests\[0\] \(K\): field 'critical_low' \(2.8\) must be below 'critical_high' \(2\)"),
    ('critical_high = 6.2', 'critical_hihg = 6.2', r"tests\[0\] \(K\): unknown field\(s\) "
                                                   r"critical_hihg"),
    ('loinc = "2823-3"', 'loinc = "2823-4"',
     r"tests\[0\] \(K\): field 'loinc' '2823-4' has a wrong check digit \(expected 2823-3\)"),
    ('loinc = "2823-3"', 'loinc = "2951-2"', r"tests\[1\] \(NA\): LOINC 2951-2 is already "
                                             r"test K"),
    ('code = "K"', 'code = "NA"', r"tests\[1\]: test code 'NA' appears twice"),
    ('code = "K"', 'code = "k"', r"tests\[0\]: field 'code' has the wrong form: 'k'"),
    ('{ sex = "*", age_min_y = 0, age_max_y = 18,', '{ sex = "*", age_min_y = 0, '
     'age_max_y = 19,', r"tests\[0\] \(K\)\.ranges\[1\]: ages \[18, 200\) for sex '\*' "
                        r"overlap another range's \[0, 19\)"),
    ('{ sex = "*", age_min_y = 0, age_max_y = 18,', '{ sex = "X", age_min_y = 0, '
     'age_max_y = 18,', r"tests\[0\] \(K\)\.ranges\[0\]: field 'sex' must be one of M, F, \*"),
    ('low = 3.4, high = 4.7', 'low = 4.7, high = 3.4',
     r"ranges\[0\]: field 'low' \(4.7\) must be below 'high' \(3.4\)"),
    ('low = 3.4, high = 4.7', 'lo = 3.4', r"ranges\[0\]: field 'low' or 'high' is required"),
    ('room_unspun = 4,', 'room_unspun = -4,', r"tests\[0\] \(K\)\.stability: field "
                                              r"'room_unspun' must be >= 0, found -4"),
    ('room_unspun = 4,', 'room_unspun = 4, fridge = 3,',
     r"tests\[0\] \(K\)\.stability: unknown field\(s\) fridge"),
    ('delta = { abs = 1.0, pct = 20, window_h = 72 }', 'delta = { abs = 1.0, pct = 20 }',
     r"tests\[0\] \(K\)\.delta: field 'window_h' is required"),
    ('delta = { abs = 1.0, pct = 20, window_h = 72 }',
     'delta = { abs = 1.0, pct = 0, window_h = 72 }',
     r"tests\[0\] \(K\)\.delta: field 'pct' must be > 0, found 0"),
    ('hil = { H = 50,', 'hil = { X = 5, H = 50,', r"\(K\)\.hil: unknown field\(s\) X"),
    ('measuring_high = 10.0', 'measuring_high = nan',
     r"field 'measuring_high' must be a finite number, found nan"),
    ('measuring_high = 10.0', 'measuring_high = true',
     r"field 'measuring_high' must be a finite number, found True"),
])
def test_a_broken_test_is_refused_naming_file_test_and_field(
        tmp_path: Path, old: str, new: str, message: str) -> None:
    path = _broken(tmp_path, old, new)
    with pytest.raises(CatalogError, match=message) as caught:
        load_catalog(path)
    assert str(caught.value).startswith(str(path)), str(caught.value)
    assert isinstance(caught.value, ConfigurationError)


@pytest.mark.parametrize(("old", "new", "message"), [
    ('version = "2026.12-1"\n', "", r"catalog.toml: \[catalog\]: field 'version' is required"),
    ('protocol = "astm"', 'protocol = "serial"',
     r"analyzers\[0\] \(CHEM1\): field 'protocol' must be one of astm, hl7, found 'serial'"),
    ('addresses = ["127.0.0.1", "::1"]', 'addresses = ["127.0.0.300"]',
     r"analyzers\[0\] \(CHEM1\): field 'addresses' has '127.0.0.300', which is not an IP"),
    ('tests = ["K", "NA",', 'tests = ["K", "NAX",',
     r"analyzers\[0\] \(CHEM1\): field 'tests' names 'NAX', which is not a test"),
    ('tests = ["K", "NA",', 'tests = ["NA",', r"test\(s\) K are on no analyzer"),
    ('id = "HEME1"', 'id = "CHEM1"', r"analyzers\[1\]: analyzer id 'CHEM1' appears twice"),
    ('[catalog]', 'colour = "red"\n[catalog]', r"catalog.toml: unknown field\(s\) colour"),
    ('[catalog]', '[catalog', r"not valid UTF-8 TOML"),
    ('[catalog]', '[katalog]', r"the \[catalog\] table \(version, title\) is required"),
])
def test_a_broken_catalog_header_or_analyzer_is_refused(
        tmp_path: Path, old: str, new: str, message: str) -> None:
    path = _broken(tmp_path, old, new, in_k=False)
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"lab catalog .*nope.toml cannot be read"):
        load_catalog(tmp_path / "nope.toml")


def test_get_catalog_follows_the_setting_and_rereads_an_edited_file(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(SHIPPED, encoding="utf-8")
    settings = Settings(lab_catalog=path)
    first = get_catalog(settings)
    assert get_catalog(settings) is first  # cached
    assert get_catalog(Settings()).source == str(SHIPPED_CATALOG)
    path.write_text(SHIPPED.replace('version = "2026.12-1"', 'version = "2026.12-2"'),
                    encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = get_catalog(settings)
    assert second.version == "2026.12-2" and second.sha256 != first.sha256
    # A broken edit is refused (the center does not run on half a catalog).
    path.write_text(SHIPPED.replace('units = "mmol/L"', 'units = 5', 1), encoding="utf-8")
    with pytest.raises(CatalogError, match=r"tests\[0\] \(K\): field 'units' must be a string"):
        get_catalog(settings)
