"""The ``rdc`` command: help everywhere, site management, clear errors, status, the
operator token."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, Center, wait_port

COMMANDS = [[], ["up"], ["orthanc"], ["gateway"], ["worker"], ["web"], ["demo"], ["status"],
            ["token"], ["commitment"],
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


def test_token_prints_the_operator_token_file(center: Center) -> None:
    token_file = center.home / "secrets" / "api-token"
    assert not token_file.exists()
    r = center.rdc("token")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == token_file
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 40
    # Asked again, the same token: it is made once.
    again = center.rdc("token")
    assert again.stdout == r.stdout and token_file.read_text().strip() == token


def test_web_creates_the_token_before_any_request(center: Center) -> None:
    """The README tells scripts to read the file as soon as the center is up."""
    token_file = center.home / "secrets" / "api-token"
    center.home.mkdir(parents=True, exist_ok=True)
    with open(center.home / "web.test.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rdc", "web"], env=center.env,
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(center.web_port, 60, proc)
        assert token_file.is_file() and token_file.stat().st_mode & 0o777 == 0o600
    finally:
        proc.terminate()
        proc.wait(30)
