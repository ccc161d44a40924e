"""Gateway pieces on their own: spool durability rules, dataset inspection, routing rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from core.errors import ConfigurationError
from core.settings import Settings
from pacs_gateway.inspect import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_INVALID_UID,
    STATUS_MISSING_UID,
    InvalidDataset,
    inspect_encoded,
)
from pacs_gateway.routing import load_rules, parse_rules
from pacs_gateway.scp import preferred_transfer_syntaxes
from pacs_gateway.spool import Spool, SpoolFull


def test_spool_writes_whole_files_named_by_uuid(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)
    rid = spool.write(b"DICM" * 100)
    assert spool.read(rid) == b"DICM" * 100
    assert spool.pending() == [rid]
    assert not list(spool.tmp.iterdir())
    (spool.tmp / "crashed.part").write_bytes(b"half")
    assert spool.drop_partial() == 1
    spool.remove(rid)
    assert spool.pending() == []


@pytest.mark.parametrize("evil", ["../../etc/passwd", "1.2/3", "1.2\x00.3", ""])
def test_spool_never_builds_a_path_from_anything_but_a_uuid(tmp_path: Path, evil: str) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)
    with pytest.raises(ValueError):
        spool.path(evil)


def test_spool_refuses_below_watermark(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=2**62)
    with pytest.raises(SpoolFull, match="MiB free"):
        spool.write(b"x")
    assert not list(spool.ready.iterdir()) and not list(spool.tmp.iterdir())


def _encoded(name: str = "CT_small.dcm", **changes: str) -> bytes:
    from io import BytesIO

    ds = dcmread(get_testdata_file(name))
    for k, v in changes.items():
        setattr(ds, k, v)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_inspect_reads_identifiers_without_pixels() -> None:
    info = inspect_encoded(_encoded())
    assert info.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert info.modality == "CT"
    assert info.study_uid.startswith("1.3.6.1.4.1.5962")


@pytest.mark.parametrize("keyword,value,status", [
    ("SOPInstanceUID", "../../../../tmp/evil", STATUS_INVALID_UID),
    ("StudyInstanceUID", "1.2/3", STATUS_INVALID_UID),
    ("SeriesInstanceUID", "1.2\x00.3x", STATUS_INVALID_UID),
    ("SeriesInstanceUID", "1." + "2" * 70, STATUS_INVALID_UID),
    ("StudyInstanceUID", "", STATUS_MISSING_UID),
])
def test_inspect_refuses_bad_uids(keyword: str, value: str, status: int) -> None:
    import pydicom.config

    old = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        data = _encoded(**{keyword: value})
    finally:
        pydicom.config.settings.writing_validation_mode = old
    with pytest.raises(InvalidDataset) as e:
        inspect_encoded(data)
    assert e.value.status == status and keyword in str(e.value)


@pytest.mark.parametrize("data", [b"", b"garbage" * 50, b"\0" * 128 + b"DICM" + b"\xff" * 40])
def test_inspect_refuses_unparseable(data: bytes) -> None:
    with pytest.raises(InvalidDataset) as e:
        inspect_encoded(data)
    assert e.value.status == STATUS_CANNOT_UNDERSTAND


def test_inspect_refuses_truncated_dataset() -> None:
    data = _encoded()
    with pytest.raises(InvalidDataset):
        inspect_encoded(data[: len(data) // 3])


def test_bit_exact_syntaxes_are_preferred_over_lossy_ones() -> None:
    order = preferred_transfer_syntaxes()
    assert order[0] == "1.2.840.10008.1.2.1"  # explicit VR little endian first
    # lossless encapsulated (JPEG 2000 lossless, RLE) before any lossy syntax
    for lossless in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.70"):
        for lossy in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91",
                      "1.2.840.10008.1.2.4.81"):
            assert order.index(lossless) < order.index(lossy)
    assert order.index("1.2.840.10008.1.2") < order.index("1.2.840.10008.1.2.4.50")


# Routing rules ----------------------------------------------------------------------
def test_shipped_rules_are_valid() -> None:
    rules = load_rules(Settings().routing_rules_path())
    assert rules.version >= 1
    assert [r.id for r in rules.select("any", {"CT"}, set())] == ["human-read-images",
                                                                  "ai-preread-images"]
    assert [r.id for r in rules.select("any", {"MR"}, set())] == ["human-read-images"]
    assert [r.id for r in rules.select("any", {"ECG"}, set())] == [
        "ai-preread-images", "human-read-ecg", "ecg-analysis"]
    assert [r.id for r in rules.select("any", {"RTPLAN"}, set())] == ["human-read-other"]


@pytest.mark.parametrize("text,match", [
    ("version = 0\n[[rule]]\nid='a'\njob='x'\nqueue='q'", "version"),
    ("version = 1\n", "no rules"),
    ("version = 1\n[[rule]]\nid='a'\njob='x'\nqueue='q'\npriority='asap'", "priority"),
    ("version = 1\n[[rule]]\nid='a'\njob='x'\nqueue='q'\nmatch={colour=['red']}", "colour"),
    ("version = 1\n[[rule]]\nid='a'\njob='x'\nqueue='q'\n[[rule]]\nid='a'\njob='x'\nqueue='q'",
     "duplicate"),
    ("version = 1\n[[rule]]\nid='a'\nqueue='q'", "'job'"),
    ("version = [", "TOML"),
])
def test_bad_rules_are_refused_with_the_reason(text: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        parse_rules(text, "rules.toml")


def test_rules_match_site_modality_and_sop_class() -> None:
    rules = parse_rules(
        "version = 3\n"
        "[[rule]]\nid='ct-a'\njob='ai'\nqueue='inference'\npriority='urgent'\n"
        "match={site=['a'], modality=['CT']}\n"
        "[[rule]]\nid='sr'\njob='h'\nqueue='reading'\nmatch={sop_class=['1.2.3']}\n"
        "[[rule]]\nid='rest'\njob='h'\nqueue='reading'\nfallback=true\n", "r")
    assert [r.id for r in rules.select("a", {"CT", "SR"}, {"1.2.3"})] == ["ct-a", "sr"]
    assert [r.id for r in rules.select("b", {"CT"}, set())] == ["rest"]
    assert rules.rules[0].priority == 7


def test_rules_reload_when_the_file_changes(tmp_path: Path) -> None:
    p = tmp_path / "r.toml"
    p.write_text("version = 1\n[[rule]]\nid='a'\njob='h'\nqueue='reading'\n")
    assert load_rules(p).version == 1
    p.write_text("version = 2\n[[rule]]\nid='a'\njob='h'\nqueue='reading'\n")
    os.utime(p, (p.stat().st_atime, p.stat().st_mtime + 5))
    assert load_rules(p).version == 2
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_rules(tmp_path / "missing.toml")


@pytest.mark.parametrize("cut", [4, 8, 100])
def test_inspect_refuses_truncated_encapsulated_pixel_data(cut: int) -> None:
    data = Path(get_testdata_file("JPEG2000.dcm")).read_bytes()
    inspect_encoded(data)  # whole: accepted
    with pytest.raises(InvalidDataset) as e:
        inspect_encoded(data[:-cut])
    assert e.value.status in (STATUS_CANNOT_UNDERSTAND, STATUS_MISSING_UID)


def test_association_contexts_are_private_copies_equal_to_pynetdicoms() -> None:
    """The cheap per-association copy negotiates as pynetdicom's deep copy does."""
    import copy

    from pynetdicom import AE
    from pynetdicom.presentation import AllStoragePresentationContexts

    from pacs_gateway.connection import copy_contexts
    from pacs_gateway.scp import preferred_transfer_syntaxes

    ae = AE()
    for cx in AllStoragePresentationContexts[:20]:
        assert cx.abstract_syntax is not None
        ae.add_supported_context(cx.abstract_syntax, preferred_transfer_syntaxes())
    shared = ae.supported_contexts
    mine = copy_contexts(shared)
    assert [c.__dict__ for c in mine] == [c.__dict__ for c in copy.deepcopy(shared)]
    mine[0].transfer_syntax = ["1.2.840.10008.1.2"]
    mine[1].scp_role = True
    assert len(shared[0].transfer_syntax) == len(preferred_transfer_syntaxes())
    assert shared[1].scp_role is None
