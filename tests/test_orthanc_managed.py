"""The center's own Orthanc: locked down by its generated configuration (its DICOM port
only echoes and stores for the gateway), health-checked,
and able to keep its index in PostgreSQL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import psycopg
import pytest
from pydicom.data import get_testdata_file

from conftest import Center, _create_pg_database, _drop_pg_database
from core.orthanc_config import write_config
from devkit.dcmtk import echoscu, storescu


def test_generated_config_is_locked_down(center: Center) -> None:
    path = write_config(center.settings)
    cfg = json.loads(path.read_text())
    assert path.stat().st_mode & 0o077 == 0  # it holds a password
    assert cfg["RemoteAccessAllowed"] is False and cfg["AuthenticationEnabled"] is True
    assert cfg["DicomAlwaysAllowStore"] is False and cfg["DicomCheckModalityHost"] is True
    assert cfg["DicomCheckCalledAet"] is True
    assert not any(v for k, v in cfg.items() if k.startswith("DicomAlwaysAllow"))
    assert list(cfg["DicomModalities"]) == ["gateway"]
    gateway = cfg["DicomModalities"]["gateway"]
    assert gateway["Host"] == "127.0.0.1"
    # Orthanc turns on every Allow* option left out: the gateway only echoes and stores.
    assert {k for k, v in gateway.items() if k.startswith("Allow") and v} == {"AllowEcho",
                                                                               "AllowStore"}
    assert {"AllowFind", "AllowFindWorklist", "AllowMove", "AllowGet",
            "AllowStorageCommitment"} <= set(gateway)
    assert cfg["StorageDirectory"].startswith(str(center.home.resolve()))
    assert cfg["IndexDirectory"].startswith(str(center.home.resolve()))
    assert any(p.endswith("libOrthancDicomWeb.so") for p in cfg["Plugins"])
    assert "PostgreSQL" not in cfg


def test_orthanc_refuses_anonymous_http_and_foreign_dicom_senders(center: Center) -> None:
    center.start_orthanc()
    r = httpx.get(f"http://127.0.0.1:{center.orthanc_http_port}/system", timeout=5)
    assert r.status_code == 401
    with center.orthanc() as client:
        assert client.system()["DicomAet"] == "RDC_ARCHIVE"
        plugins = httpx.get(f"{client.url}/plugins", auth=center.settings.orthanc_credentials(),
                            timeout=5).json()
        assert "dicom-web" in plugins and "wsi" in plugins
    # Only the gateway may store over DICOM: a county modality going around it is refused.
    f = Path(get_testdata_file("CT_small.dcm"))
    result = storescu([f], host="127.0.0.1", port=center.orthanc_dicom_port,
                      calling_ae="SNEAKY", called_ae="RDC_ARCHIVE")
    assert result.succeeded == []
    with center.orthanc() as client:
        assert client.statistics()["CountInstances"] == 0


def _query(tool: str, center: Center, calling_ae: str, *extra: str,
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "-v", "-S", "-aet", calling_ae, "-aec", "RDC_ARCHIVE",
                           "-to", "10", "-ta", "10", "-k", "QueryRetrieveLevel=STUDY",
                           "-k", "StudyInstanceUID", "-k", "PatientName", *extra,
                           "127.0.0.1", str(center.orthanc_dicom_port)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_orthanc_dicom_port_only_echoes_and_stores_for_the_gateway(center: Center) -> None:
    """A local process presenting the gateway's AE title cannot query or retrieve."""
    center.start_orthanc()
    with center.orthanc() as client:
        answer = client.upload_instance(Path(get_testdata_file("CT_small.dcm")).read_bytes())
        assert answer["Status"] == "Success"
    # What the gateway uses still works.
    code, out = echoscu(host="127.0.0.1", port=center.orthanc_dicom_port,
                        calling_ae=center.gateway_ae, called_ae="RDC_ARCHIVE")
    assert code == 0, out
    for calling_ae in (center.gateway_ae, "SNEAKY"):
        found = _query("findscu", center, calling_ae)
        out = found.stdout + found.stderr
        assert "CT1" not in out and "Find Response: 1 (Pending)" not in out, out
        assert found.returncode != 0 or "Failed" in out or "Refused" in out, out
        moved = _query("movescu", center, calling_ae, "-aem", calling_ae)
        out = moved.stdout + moved.stderr
        assert moved.returncode != 0 or "Failed" in out or "Refused" in out, out
        assert "Completed Suboperations  : 1" not in out, out


def test_orthanc_index_in_postgresql(center: Center, pg_admin: str) -> None:
    name, url = _create_pg_database(pg_admin)
    try:
        center.extra_env["RDC_ORTHANC_INDEX_URL"] = url
        center.start_orthanc()
        with center.orthanc() as client:
            answer = client.upload_instance(Path(get_testdata_file("CT_small.dcm")).read_bytes())
            assert answer["Status"] == "Success"
        center.stop_orthanc()
        with psycopg.connect(url) as conn:
            tables = {r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            assert "resources" in {t.lower() for t in tables}
            count = conn.execute("SELECT count(*) FROM resources").fetchone()
            assert count is not None and count[0] >= 4  # patient, study, series, instance
        # The index outlives the process: a restarted Orthanc still knows the instance.
        center.start_orthanc()
        with center.orthanc() as client:
            assert client.statistics()["CountInstances"] == 1
    finally:
        center.stop_orthanc()
        _drop_pg_database(pg_admin, name)


def test_orthanc_port_in_use_is_a_clear_error(center: Center) -> None:
    import socket

    from core.errors import ConfigurationError
    from core.orthanc_process import start_orthanc

    with socket.socket() as blocker:
        blocker.bind(("0.0.0.0", center.orthanc_http_port))
        blocker.listen()
        with pytest.raises(ConfigurationError, match=r"exited at start-up|something else"):
            start_orthanc(center.settings, wait_s=20)
