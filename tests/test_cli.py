"""The ``rdc`` command: help everywhere, site management, clear errors, status."""

from __future__ import annotations

import pytest

from conftest import Center

COMMANDS = [[], ["up"], ["orthanc"], ["gateway"], ["worker"], ["web"], ["demo"], ["status"],
            ["config"], ["sites"], ["sites", "add"], ["sites", "list"], ["sites", "remove"],
            ["audit"], ["audit", "verify"], ["keys"], ["keys", "issue"], ["keys", "list"],
            ["keys", "revoke"], ["keys", "export"], ["reports"], ["reports", "verify"],
            ["reports", "list"], ["deliveries"], ["deliveries", "list"],
            ["deliveries", "resend"]]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "rdc")
def test_help_everywhere(center: Center, args: list[str]) -> None:
    r = center.rdc(*args, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout


def test_sites_add_list_remove(center: Center) -> None:
    r = center.rdc("sites", "add", "county-b", "--name", "County B 县医院", "--ae-title",
                   "COUNTY_B", "--host", "192.0.2.10", "--port", "104", "--allow",
                   "192.0.2.0/24", "--accepts-results")
    assert r.returncode == 0, r.stderr
    listing = center.rdc("sites", "list")
    assert "county-b" in listing.stdout and "COUNTY_B" in listing.stdout
    assert "192.0.2.0/24" in listing.stdout

    dup = center.rdc("sites", "add", "county-c", "--name", "C", "--ae-title", "COUNTY_B",
                     "--host", "192.0.2.11")
    assert dup.returncode != 0 and "already used by site 'county-b'" in dup.stderr

    bad = center.rdc("sites", "add", "county-d", "--name", "D", "--ae-title", "D",
                     "--host", "192.0.2.12", "--allow", "not-a-network")
    assert bad.returncode == 2 and "invalid allowed address" in bad.stderr

    gone = center.rdc("sites", "remove", "county-b")
    assert gone.returncode == 0 and "deleted" in gone.stdout
    missing = center.rdc("sites", "remove", "county-b")
    assert missing.returncode == 3 and "no such site" in missing.stderr


def test_status_and_audit_verify(center: Center) -> None:
    center.add_site()
    r = center.rdc("status")
    assert r.returncode == 0, r.stderr
    assert "county-a" in r.stdout and "not reachable" in r.stdout  # Orthanc is not started
    v = center.rdc("audit", "verify")
    assert v.returncode == 0 and "1 records verified" in v.stdout


def test_bad_configuration_is_a_clear_error(center: Center) -> None:
    center.extra_env["RDC_GATEWAY_PORT"] = "not-a-port"
    r = center.rdc("status")
    assert r.returncode == 2 and "configuration error" in r.stderr and "gateway_port" in r.stderr


def test_orthanc_missing_is_a_clear_error(center: Center) -> None:
    center.extra_env["RDC_ORTHANC_BINARY"] = "orthanc-that-is-not-installed"
    r = center.rdc("orthanc", timeout=30)
    assert r.returncode != 0
    assert "Orthanc is not installed" in r.stderr and "apt-get install orthanc" in r.stderr
