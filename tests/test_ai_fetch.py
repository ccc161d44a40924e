"""How the inference worker finds a series' files in a real Orthanc: by the Orthanc IDs
the gateway recorded (one request per file), only the site's own study's stored
instances, and by UID when a recorded ID is gone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from pydicom import dcmread

from ai_models.inference import BatchRunner, Item, stored_instances
from ai_models.manifest import load_manifest
from ai_models.pipelines import get_pipeline
from ai_models.runtime import load_session
from conftest import Center
from core.models import Instance, Study
from core.settings import get_settings
from core.states import InstanceState, StudyState
from devkit.samples import Patient, write_chest_radiograph

CXR = Path(__file__).resolve().parents[1] / "ai_models" / "shipped" / "cxr-triage" / "1.0.0"


def _study(c: Center, site: str, study_uid: str) -> int:
    with c.db.session() as s:
        study = Study(site_id=site, study_uid=study_uid, patient_id="P", modalities=["DX"],
                      state=StudyState.COMPLETE, expected_instances=1, received_instances=1,
                      stored_instances=1, completed_at=datetime.now(UTC))
        s.add(study)
        s.flush()
        return study.id


def _instance(c: Center, study_id: int, site: str, series_uid: str, orthanc_id: str | None,
              state: str = InstanceState.STORED) -> None:
    with c.db.session() as s:
        s.add(Instance(id=str(uuid.uuid4()), site_id=site, study_id=study_id,
                       series_uid=series_uid, sop_instance_uid=f"2.25.{uuid.uuid4().int}",
                       sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                       transfer_syntax="1.2.840.10008.1.2.1", modality="DX", size_bytes=1,
                       state=state, orthanc_id=orthanc_id, calling_ae="X",
                       peer_address="127.0.0.1"))


def test_the_worker_fetches_by_recorded_ids_and_falls_back_to_uids(
        center: Center, tmp_path: Path) -> None:
    c = center
    c.start_orthanc()
    c.add_site("county-a")
    c.add_site("county-b", ae_title="COUNTY_B", port=11198)
    g = write_chest_radiograph(tmp_path / "dx", size=128, seed=7, patient=Patient(id="F1"))
    data = g.paths[0].read_bytes()
    sop = str(dcmread(g.paths[0], stop_before_pixels=True).SOPInstanceUID)
    with c.orthanc() as client:
        orthanc_id = str(client.upload_instance(data)["ID"])

    own = _study(c, "county-a", g.study_uid)
    other = _study(c, "county-b", "2.25.999")  # another site's study, same series UID
    _instance(c, own, "county-a", g.series_uid, orthanc_id)
    _instance(c, own, "county-a", g.series_uid, orthanc_id)  # the site resent it
    _instance(c, own, "county-a", g.series_uid, "not-stored-yet", state=InstanceState.SPOOLED)
    _instance(c, other, "county-b", g.series_uid, "other-sites-instance")
    item = Item(job_id=11, study_id=own, series_uid=g.series_uid, leader=True)
    assert stored_instances(c.db, [item]) == {11: [orthanc_id]}  # once, though resent
    lone = Item(job_id=12, study_id=other + 1000, series_uid=g.series_uid, leader=False)
    assert stored_instances(c.db, [lone]) == {}

    manifest = load_manifest(CXR)
    runner = BatchRunner(c.db, get_settings(), load_session(CXR, manifest, "cpu"),
                         get_pipeline(manifest))
    with c.orthanc() as client:
        runner.known = stored_instances(c.db, [item])
        assert [str(d.SOPInstanceUID) for d in runner._fetch(client, item)] == [sop]
        # A recorded ID that Orthanc no longer has: found again by the series UID.
        runner.known = {11: ["0123abcd-0123abcd-0123abcd-0123abcd-0123abcd"]}
        assert [str(d.SOPInstanceUID) for d in runner._fetch(client, item)] == [sop]
        # No recorded IDs at all (an import): by UID too.
        runner.known = {}
        assert [str(d.SOPInstanceUID) for d in runner._fetch(client, item)] == [sop]
