"""``rdc deploy systemd``: the files of a multi-node center, and the topologies it refuses.

The generated files are used for real by tests/test_multinode.py; here the generator's
checks, and the spool's own refusal at run time (pacs_gateway/spool_owner.py).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigurationError
from core.settings import Settings
from devkit.center import REPO
from devkit.ports import free_port
from devkit.topology import parse_unit
from pacs_gateway.spool_owner import claim_spool
from rdc.deploy import parse, write

BASE: dict[str, Any] = {
    "center": {
        "database_url": "postgresql://rdc@db.example/rdc",
        "broker_url": "amqp://rdc@mq.example//",
        "orthanc_index_url": "postgresql://orthanc@db.example/orthanc",
        "orthanc_storage_dir": "/srv/rdc/orthanc",
        "secrets_dir": "/srv/rdc/secrets",
        "shared_volumes": ["/srv/rdc"],
        "orthanc_password": "fixed-for-the-test",
    },
    "balancer": {"address": "10.0.0.10"},
    "node": [
        {"name": "gw1", "address": "10.0.0.11", "roles": ["gateway", "orthanc"]},
        {"name": "gw2", "address": "10.0.0.12", "roles": ["gateway", "orthanc"]},
        {"name": "work1", "address": "10.0.0.13", "roles": ["worker", "scheduler"]},
        {"name": "web1", "address": "10.0.0.14", "roles": ["web"]},
    ],
}


def _with(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        table, _, key = path.partition("__")
        if table.startswith("node"):
            idx = int(table.removeprefix("node"))
            data["node"][idx][key] = value
        else:
            data[table][key] = value
    return data


def test_files_for_every_node_and_the_balancer(tmp_path: Path) -> None:
    topo = parse(copy.deepcopy(BASE))
    written = write(topo, tmp_path)
    names = sorted(str(p.relative_to(tmp_path)) for p in written)
    assert "gw1/rdc-gateway.service" in names and "gw1/rdc-orthanc.service" in names
    assert "work1/rdc-worker.service" in names and "web1/rdc-web.service" in names
    assert "balancer/haproxy.cfg" in names
    assert "prometheus/targets-gateway.json" in names

    argv, env = parse_unit(tmp_path / "work1" / "rdc-worker.service")
    assert argv == ["/opt/rdc/.venv/bin/rdc", "worker", "--queues",
                    "routing,inference,delivery", "--concurrency", "2"]
    assert env == {"RDC_HOME": "/var/lib/rdc", "RDC_CONFIG": "/var/lib/rdc/rdc.toml"}
    unit = (tmp_path / "gw1" / "rdc-orthanc.service").read_text()
    assert "ReadWritePaths=/var/lib/rdc /srv/rdc/secrets /srv/rdc/orthanc" in unit

    # Each node's rdc.toml is valid settings, with what it must know of the others.
    toml = tmp_path / "gw2" / "rdc.toml"
    assert toml.stat().st_mode & 0o077 == 0  # it holds the passwords
    values = tomllib.loads(toml.read_text())
    s = Settings(home=tmp_path / "home", **values)
    assert s.environment == "production" and s.node == "gw2"
    assert s.gateway_balancer_networks[0].with_prefixlen == "10.0.0.10/32"
    assert s.trusted_proxy_list == ["10.0.0.10"]
    assert s.orthanc_url == "http://10.0.0.10:8042"
    assert s.orthanc_remote_access is True
    assert str(s.secrets_dir) == "/srv/rdc/secrets"
    assert values["orthanc_password"] == "fixed-for-the-test"

    cfg = (tmp_path / "balancer" / "haproxy.cfg").read_text()
    assert "server gw1 10.0.0.11:11112" in cfg and "server gw2 10.0.0.12:11112" in cfg
    assert "server web1 10.0.0.14:8000" in cfg
    assert "send-proxy-v2" in cfg
    # DICOM over TLS passes through to each gateway's TLS port, PROXY header first.
    assert "frontend dicom_tls" in cfg and "bind 0.0.0.0:2762" in cfg
    assert "server gw1 10.0.0.11:2762" in cfg
    assert s.gateway_tls_listen_port == 2762
    assert s.gateway_tls_name_list == ["10.0.0.10"]


def test_haproxy_accepts_the_configuration(tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(haproxy).exists(), "haproxy is required (./bootstrap.sh installs it)"
    data = _with(balancer__address="127.0.0.1", balancer__log="stdout")
    write(parse(data), tmp_path)
    r = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "balancer" / "haproxy.cfg")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(("changes", "message"), [
    ({"center__database_url": "sqlite:////var/lib/rdc/rdc.sqlite3"}, "must be PostgreSQL"),
    ({"center__broker_url": "filesystem://"}, "must be RabbitMQ"),
    ({"center__orthanc_index_url": ""}, "one PostgreSQL index"),
    ({"center__secrets_dir": ""}, "secrets_dir is required"),
    ({"node0__home": "/srv/rdc/gw1"}, "is on the shared volume /srv/rdc"),
    ({"node1__address": "10.0.0.11"}, "would share the gateway spool"),
    ({"node1__name": "gw1"}, "node names must be unique"),
    ({"node2__roles": ["worker", "reporting"]}, "unknown role"),
    ({"node3__roles": ["worker"]}, "no node has the 'web' role"),
    ({"node3__settings": {"trusted_proxies": "0.0.0.0/0"}}, "derived from the node list"),
    ({"node0__gateway_port": 8043}, "is taken twice"),
    ({"node0__name": "../etc"}, "must be letters"),
    ({"node0__home": "relative/home"}, "absolute path"),
    ({"balancer__dicom_port": 70000}, "port number"),
])
def test_topologies_that_cannot_work_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse(_with(**changes))


def test_two_gateways_sharing_a_home_on_one_host_are_refused_but_not_on_two() -> None:
    data = _with(node1__address="10.0.0.11", node1__home="/var/lib/rdc-2",
                 node1__gateway_port=11113, node1__orthanc_http_port=8045,
                 node1__orthanc_dicom_port=4245, node1__metrics_port=9420)
    with pytest.raises(ConfigurationError, match=r"port 2762 on 10\.0\.0\.11 is taken twice"):
        parse(data)  # both gateways' TLS ports
    data["node"][1]["gateway_tls_port"] = 2763
    parse(data)  # one host, two homes: two spools


def test_the_cli_writes_or_says_why_not(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.toml"
    nodes.write_text("[center]\ndatabase_url = 'sqlite:///x'\n[balancer]\naddress='1.2.3.4'\n"
                     "[[node]]\nname='a'\naddress='1.2.3.5'\nroles=['gateway']\n")
    r = subprocess.run([sys.executable, "-m", "rdc", "deploy", "systemd", "--nodes",
                        str(nodes), "--out", str(tmp_path / "out")], capture_output=True,
                       text=True, cwd=REPO, timeout=60, check=False)
    assert r.returncode != 0
    assert "no node has the 'orthanc' role" in " ".join(r.stderr.split())
    assert not (tmp_path / "out").exists()
    nodes.write_text("not = [toml")
    r = subprocess.run([sys.executable, "-m", "rdc", "deploy", "systemd", "--nodes",
                        str(nodes)], capture_output=True, text=True, cwd=REPO, timeout=60,
                       check=False)
    assert r.returncode != 0 and "not valid TOML" in r.stderr


def test_a_spool_belongs_to_one_gateway_node(tmp_path: Path) -> None:
    """At run time: a spool that names another node, or that a running gateway holds,
    is refused (a shared volume mounted on two gateway nodes, a copied rdc.toml)."""
    spool = tmp_path / "spool"
    claim = claim_spool(spool, "gw1")
    with pytest.raises(ConfigurationError, match="in use by another running gateway"):
        claim_spool(spool, "gw1")
    with pytest.raises(ConfigurationError, match="belongs to gateway node 'gw1'"):
        claim_spool(spool, "gw2")
    claim.release()
    claim_spool(spool, "gw1").release()  # the same node again, after a restart
    with pytest.raises(ConfigurationError, match="belongs to gateway node 'gw1'"):
        claim_spool(spool, "gw2")


def test_a_gateway_refuses_another_nodes_spool(tmp_path: Path) -> None:
    """The gateway process itself exits with the reason."""
    home = tmp_path / "home"
    (home / "spool").mkdir(parents=True)
    (home / "spool" / "NODE").write_text("gw-other\n")
    env = {"RDC_HOME": str(home), "RDC_NODE_NAME": "gw-this",
           "RDC_DATABASE_URL": f"sqlite:///{home / 'rdc.sqlite3'}",
           "PATH": "/usr/bin:/bin", "RDC_GATEWAY_PORT": str(free_port())}
    r = subprocess.run([sys.executable, "-m", "rdc", "gateway"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode != 0
    assert "belongs to gateway node 'gw-other'" in " ".join(r.stderr.split())
