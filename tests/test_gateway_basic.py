"""The gateway end to end: echo, store, upload, tagged with the site."""

from __future__ import annotations

from pathlib import Path

from pydicom.data import get_testdata_file
from sqlalchemy import select

from conftest import SENDER_AE, Center, wait_until
from core.models import AuditRecord, Instance, Study
from core.orthanc_client import SOURCE_SITE_METADATA
from devkit.dcmtk import echoscu, storescu
from dicom_compare import same_dataset


def test_echo_and_store_reach_orthanc_tagged_with_site(running: Center) -> None:
    c = running
    rc, out = echoscu(host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                      called_ae=c.gateway_ae)
    assert rc == 0, out
    path = Path(get_testdata_file("CT_small.dcm"))
    result = storescu([path], host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                      called_ae=c.gateway_ae)
    assert result.succeeded == [path], result.output

    def stored() -> Instance | None:
        with c.db.session() as s:
            return s.scalar(select(Instance).where(Instance.state == "stored"))

    inst = wait_until(stored, 30, "the instance in Orthanc")
    with c.orthanc() as client:
        assert client.get_metadata("instances", inst.orthanc_id, SOURCE_SITE_METADATA) == \
            "county-a"
        ok, why = same_dataset(path.read_bytes(), client.instance_file(inst.orthanc_id))
        assert ok, why
        with c.db.session() as s:
            study = s.get(Study, inst.study_id)
            assert study is not None
            assert study.orthanc_id == client.lookup(study.study_uid)[0]["ID"]
    assert not list((c.home / "spool" / "ready").iterdir()), "spool file kept after upload"
    with c.db.session() as s:
        actions = set(s.scalars(select(AuditRecord.action)))
    assert {"association.accept", "association.release"} <= actions
