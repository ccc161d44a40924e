"""A multi-node center from one node list: each node's ``rdc.toml``, its systemd units,
and the HAProxy configuration of the balancer in front of them.

``rdc deploy systemd --nodes nodes.toml --out DIR`` writes::

    DIR/<node>/rdc.toml              copy to the node's RDC_HOME (mode 0600: secrets)
    DIR/<node>/rdc-<role>.service    copy to /etc/systemd/system on the node
    DIR/balancer/haproxy.cfg         the balancer's configuration
    DIR/prometheus/targets-<role>.json   file_sd targets for Prometheus

The node list names the shared services once (PostgreSQL, the broker, Orthanc's
index and shared storage) and each node's roles and ports.  Everything a node needs to
know about the others is derived here, so that the balancer's address, the ports and
the shared secrets cannot disagree between nodes:

* gateways accept the PROXY protocol from the balancer only (the site's own address
  then reaches deny-by-default);
* the web app believes X-Forwarded-For from the balancer only;
* every client of Orthanc goes through the balancer's Orthanc front end, which fails
  over between the Orthanc instances;
* one Orthanc password for all of them.

What would fail later, at 3 a.m., is refused now with the reason: SQLite or the
filesystem broker across nodes, two Orthancs without a shared index and storage, a
gateway spool on shared storage or shared with another gateway, two services on one
address and port.
"""

from __future__ import annotations

import json
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from core.errors import ConfigurationError
from core.settings import METRICS_ROLE_OFFSETS

ROLES = ("orthanc", "gateway", "worker", "web", "scheduler")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Settings the generator derives itself; a node list may not set them by hand.
_DERIVED = {"home", "node_name", "database_url", "broker_url", "orthanc_index_url",
            "orthanc_storage_dir", "orthanc_endpoint", "orthanc_password",
            "gateway_proxy_protocol_from", "trusted_proxies", "gateway_port", "web_port",
            "orthanc_http_port", "orthanc_dicom_port", "metrics_port", "web_host",
            "metrics_host", "orthanc_remote_access", "secrets_path", "gateway_tls_port",
            "gateway_tls_names"}


@dataclass(frozen=True)
class Balancer:
    address: str
    bind: str
    dicom_port: int
    #: The DICOM TLS port sites send to (passed through, TLS ends at the gateways); 0: off.
    dicom_tls_port: int
    web_port: int
    orthanc_port: int
    #: HAProxy's own Prometheus exporter and stats page; 0: off.
    stats_port: int
    #: Where HAProxy logs: syslog (``/dev/log``) on a host, ``stdout`` in a container.
    log: str
    #: PEM (certificate, chain and key) with which the balancer serves the web app over
    #: HTTPS; empty: plain HTTP (then TLS must end in front of it; production's session
    #: cookies are Secure).
    web_tls_cert: str = ""


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    home: PurePosixPath
    roles: tuple[str, ...]
    gateway_port: int
    #: The gateway's mutual-TLS port (0: off); the balancer's TLS front end sends here.
    gateway_tls_port: int
    web_port: int
    orthanc_http_port: int
    orthanc_dicom_port: int
    metrics_port: int
    worker_queues: str
    worker_concurrency: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def spool(self) -> PurePosixPath:
        return self.home / "spool"

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class Topology:
    center: dict[str, Any]
    balancer: Balancer
    nodes: tuple[Node, ...]
    install_dir: PurePosixPath
    user: str
    orthanc_password: str

    def with_role(self, role: str) -> list[Node]:
        return [n for n in self.nodes if n.has(role)]


def _int(table: dict[str, Any], key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ConfigurationError(f"{where}: {key} must be a port number 0-65535, got {value!r}")
    return value


def _str(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where}: {key} is required (a non-empty string)")
    return value


def load(path: Path) -> Topology:
    """Read and check a node list; ConfigurationError says what is wrong and where."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: no such node list") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"{path}: not valid TOML: {e}") from None
    return parse(data, str(path))


def parse(data: dict[str, Any], source: str = "nodes.toml") -> Topology:
    center = data.get("center")
    if not isinstance(center, dict):
        raise ConfigurationError(f"{source}: a [center] table is required")
    bal = data.get("balancer")
    if not isinstance(bal, dict):
        raise ConfigurationError(f"{source}: a [balancer] table is required")
    raw_nodes = data.get("node")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigurationError(f"{source}: at least one [[node]] is required")
    unknown = set(data) - {"center", "balancer", "node"}
    if unknown:
        raise ConfigurationError(f"{source}: unknown table(s) {sorted(unknown)}")

    balancer = Balancer(
        address=_str(bal, "address", "[balancer]"),
        bind=_str(bal, "bind", "[balancer]", "0.0.0.0"),
        dicom_port=_int(bal, "dicom_port", 104, "[balancer]"),
        dicom_tls_port=_int(bal, "dicom_tls_port", 2762, "[balancer]"),
        web_port=_int(bal, "web_port", 80, "[balancer]"),
        orthanc_port=_int(bal, "orthanc_port", 8042, "[balancer]"),
        stats_port=_int(bal, "stats_port", 8404, "[balancer]"),
        log=_str(bal, "log", "[balancer]", "/dev/log"),
        web_tls_cert=str(bal.get("web_tls_cert", "")))

    nodes: list[Node] = []
    for i, raw in enumerate(raw_nodes):
        where = f"{source}: [[node]] #{i + 1}"
        if not isinstance(raw, dict):
            raise ConfigurationError(f"{where}: must be a table")
        name = _str(raw, "name", where)
        if not _NAME.match(name):
            raise ConfigurationError(f"{where}: name {name!r} must be letters, digits, '.', "
                                     "'_' or '-' (it becomes file and unit names)")
        where = f"{source}: node {name!r}"
        roles = raw.get("roles")
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            raise ConfigurationError(f"{where}: roles must be a list, some of {list(ROLES)}")
        bad = [r for r in roles if r not in ROLES]
        if bad:
            raise ConfigurationError(f"{where}: unknown role(s) {bad}; roles are {list(ROLES)}")
        home = PurePosixPath(_str(raw, "home", where, "/var/lib/rdc"))
        if not home.is_absolute():
            raise ConfigurationError(f"{where}: home must be an absolute path, got {home}")
        extra = raw.get("settings", {})
        if not isinstance(extra, dict):
            raise ConfigurationError(f"{where}: settings must be a table")
        derived = sorted(set(extra) & _DERIVED)
        if derived:
            raise ConfigurationError(f"{where}: settings {derived} are derived from the node "
                                     "list; set them in [center], [balancer] or the node")
        concurrency = raw.get("worker_concurrency", 2)
        if not isinstance(concurrency, int) or not 1 <= concurrency <= 64:
            raise ConfigurationError(f"{where}: worker_concurrency must be 1-64")
        nodes.append(Node(
            name=name, address=_str(raw, "address", where), home=home,
            roles=tuple(dict.fromkeys(roles)),
            gateway_port=_int(raw, "gateway_port", 11112, where),
            gateway_tls_port=_int(raw, "gateway_tls_port", 2762, where),
            web_port=_int(raw, "web_port", 8000, where),
            orthanc_http_port=_int(raw, "orthanc_http_port", 8043, where),
            orthanc_dicom_port=_int(raw, "orthanc_dicom_port", 4243, where),
            metrics_port=_int(raw, "metrics_port", 9410, where),
            worker_queues=_str(raw, "worker_queues", where, "routing,inference,delivery"),
            worker_concurrency=concurrency, settings=dict(extra)))

    password = center.get("orthanc_password") or secrets.token_urlsafe(24)
    topo = Topology(center=center, balancer=balancer, nodes=tuple(nodes),
                    install_dir=PurePosixPath(_str(center, "install_dir", "[center]",
                                                   "/opt/rdc")),
                    user=_str(center, "user", "[center]", "rdc"),
                    orthanc_password=str(password))
    check(topo, source)
    return topo


def check(topo: Topology, source: str = "nodes.toml") -> None:
    """Refuse a topology that cannot work, with the reason."""
    center = topo.center
    names = [n.name for n in topo.nodes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigurationError(f"{source}: node names must be unique: {dupes}")
    for role in ("orthanc", "gateway", "worker", "web"):
        if not topo.with_role(role):
            raise ConfigurationError(f"{source}: no node has the {role!r} role")
    db = str(center.get("database_url", ""))
    broker = str(center.get("broker_url", ""))
    if not db or db.startswith("sqlite"):
        raise ConfigurationError(f"{source}: [center] database_url must be PostgreSQL: every "
                                 "node shares the center's database")
    if not broker or broker.startswith("filesystem"):
        raise ConfigurationError(f"{source}: [center] broker_url must be RabbitMQ (amqp://) or "
                                 "Redis (redis://): every node shares the queue")
    if len(topo.nodes) > 1 and not center.get("secrets_dir"):
        raise ConfigurationError(
            f"{source}: [center] secrets_dir is required with several nodes: the center's CA, "
            "TOTP key and operator token must be one set that every node reads (a volume "
            "only the center's user can read)")
    orthancs = topo.with_role("orthanc")
    storage = center.get("orthanc_storage_dir")
    if len(orthancs) > 1 and not (center.get("orthanc_index_url") and storage):
        raise ConfigurationError(
            f"{source}: {len(orthancs)} Orthanc nodes need [center] orthanc_index_url (one "
            "PostgreSQL index) and orthanc_storage_dir (one shared storage volume)")
    shared = [PurePosixPath(str(p)) for p in center.get("shared_volumes", [])]
    if storage:
        shared.append(PurePosixPath(str(storage)))
    gateways = topo.with_role("gateway")
    for gw in gateways:
        for vol in shared:
            if gw.spool == vol or vol in gw.spool.parents:
                raise ConfigurationError(
                    f"{source}: node {gw.name!r}: the gateway's spool {gw.spool} is on the shared "
                    f"volume {vol}.  A spool holds acknowledged instances only that gateway "
                    "may resume; put the node's home on its own disk")
    seen: dict[tuple[str, PurePosixPath], str] = {}
    for gw in gateways:
        key = (gw.address, gw.spool)
        if key in seen:
            raise ConfigurationError(
                f"{source}: nodes {seen[key]!r} and {gw.name!r} would share the gateway spool "
                f"{gw.spool} on {gw.address}; each gateway node needs a home of its own")
        seen[key] = gw.name
    used: dict[tuple[str, int], str] = {}
    for n in topo.nodes:
        ports = {"gateway": [p for p in (n.gateway_port, n.gateway_port + 2, n.gateway_tls_port)
                             if p] if n.has("gateway") else [],
                 "web": [n.web_port] if n.has("web") else [],
                 "orthanc": [n.orthanc_http_port, n.orthanc_dicom_port]
                 if n.has("orthanc") else []}
        if n.metrics_port:
            ports["metrics"] = [n.metrics_port + METRICS_ROLE_OFFSETS[r]
                                for r in n.roles if r in METRICS_ROLE_OFFSETS]
        for what, numbers in ports.items():
            for port in numbers:
                other = used.get((n.address, port))
                if other is not None:
                    raise ConfigurationError(
                        f"{source}: port {port} on {n.address} is taken twice ({other} and "
                        f"{n.name} {what})")
                used[(n.address, port)] = f"{n.name} {what}"


# Rendering -----------------------------------------------------------------------
def node_settings(topo: Topology, node: Node) -> dict[str, Any]:
    """The settings of ``node``'s ``rdc.toml``."""
    c, b = topo.center, topo.balancer
    out: dict[str, Any] = {
        "environment": c.get("environment", "production"),
        "node_name": node.name,
        "center_name": c.get("center_name", "Regional Diagnostic Center"),
        "gateway_ae": c.get("gateway_ae", "RDC_CENTER"),
        "database_url": c["database_url"],
        "broker_url": c["broker_url"],
        "orthanc_password": topo.orthanc_password,
        "orthanc_endpoint": f"http://{b.address}:{b.orthanc_port}",
        "gateway_host": "0.0.0.0",
        "gateway_port": node.gateway_port,
        # TLS passes the balancer untouched (with the PROXY header in front), so the
        # gateways' certificate must name the address sites connect to.
        "gateway_tls_port": node.gateway_tls_port if b.dicom_tls_port else 0,
        "gateway_tls_names": b.address,
        "gateway_proxy_protocol_from": b.address,
        "web_host": "0.0.0.0" if node.address not in ("127.0.0.1", "::1") else node.address,
        "web_port": node.web_port,
        "trusted_proxies": b.address,
        "orthanc_http_port": node.orthanc_http_port,
        "orthanc_dicom_port": node.orthanc_dicom_port,
        "metrics_host": "0.0.0.0" if node.address not in ("127.0.0.1", "::1") else node.address,
        "metrics_port": node.metrics_port,
        # The balancer reaches this Orthanc over the network unless both are on loopback.
        "orthanc_remote_access": b.address not in ("127.0.0.1", "::1"),
    }
    if c.get("secrets_dir"):
        out["secrets_path"] = str(c["secrets_dir"])
    if c.get("orthanc_index_url"):
        out["orthanc_index_url"] = c["orthanc_index_url"]
    if c.get("orthanc_storage_dir"):
        out["orthanc_storage_dir"] = str(c["orthanc_storage_dir"])
    out.update(c.get("settings", {}))
    out.update(node.settings)
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def render_rdc_toml(topo: Topology, node: Node) -> str:
    lines = [f"# rdc.toml of node {node.name} ({', '.join(node.roles)}), written by "
             "`rdc deploy systemd`.", "# It holds secrets: keep it mode 0600, owned by "
             f"{topo.user}.", ""]
    for key, value in node_settings(topo, node).items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


_DESCRIPTIONS = {
    "orthanc": "Orthanc archive",
    "gateway": "DICOM gateway (C-STORE from county sites)",
    "worker": "Celery worker",
    "web": "web app",
    "scheduler": "periodic tasks (stale jobs, delivery retries)",
}


def exec_args(topo: Topology, node: Node, role: str) -> list[str]:
    rdc = str(topo.install_dir / ".venv" / "bin" / "rdc")
    if role == "worker":
        return [rdc, "worker", "--queues", node.worker_queues, "--concurrency",
                str(node.worker_concurrency)]
    return [rdc, role]


def render_unit(topo: Topology, node: Node, role: str) -> str:
    writable = [str(node.home)]
    if topo.center.get("secrets_dir"):
        writable.append(str(topo.center["secrets_dir"]))
    if role == "orthanc" and topo.center.get("orthanc_storage_dir"):
        writable.append(str(topo.center["orthanc_storage_dir"]))
    caps = ""
    if role == "gateway" and node.gateway_port < 1024:
        caps = "AmbientCapabilities=CAP_NET_BIND_SERVICE\n"
    return f"""# Written by `rdc deploy systemd` for node {node.name}.
[Unit]
Description=Regional diagnostic center: {_DESCRIPTIONS[role]} on {node.name}
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=simple
User={topo.user}
Group={topo.user}
Environment=RDC_HOME={node.home}
Environment=RDC_CONFIG={node.home / "rdc.toml"}
WorkingDirectory={topo.install_dir}
ExecStart={" ".join(exec_args(topo, node, role))}
Restart=on-failure
RestartSec=2
TimeoutStopSec=30
KillMode=mixed
LimitNOFILE=65536
{caps}NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ProtectHome=yes
ReadWritePaths={" ".join(writable)}

[Install]
WantedBy=multi-user.target
"""


def render_haproxy(topo: Topology) -> str:
    b = topo.balancer
    log = "log stdout format raw local0" if b.log == "stdout" else f"log {b.log} local0"
    out = [f"""# HAProxy in front of the center, written by `rdc deploy systemd`.
global
    {log}
    maxconn 8192

defaults
    log global
    timeout connect 5s
    # A DICOM association may stay quiet while a modality prepares the next series;
    # the gateway's own idle timeout (30 s by default) ends a dead one first.
    timeout client 10m
    timeout server 10m
    timeout check 3s
    retries 3
    option redispatch

# County sites send here.  TCP, with the site's address in a PROXY v2 header, which the
# gateways accept from this balancer only (RDC_GATEWAY_PROXY_PROTOCOL_FROM).
frontend dicom
    bind {b.bind}:{b.dicom_port}
    mode tcp
    option tcplog
    default_backend gateways

backend gateways
    mode tcp
    balance leastconn
    # The health check sends a PROXY LOCAL header, which the gateway closes quietly.
    default-server send-proxy-v2 check check-send-proxy inter 2s fall 2 rise 2
"""]
    for n in topo.with_role("gateway"):
        out.append(f"    server {n.name} {n.address}:{n.gateway_port}\n")
    tls_gateways = [n for n in topo.with_role("gateway") if n.gateway_tls_port]
    if b.dicom_tls_port and tls_gateways:
        out.append(f"""
# DICOM over mutual TLS (BCP 195): passed through as TCP, TLS ends at the gateways, which
# check the site's certificate; the PROXY header goes before the TLS handshake.
frontend dicom_tls
    bind {b.bind}:{b.dicom_tls_port}
    mode tcp
    option tcplog
    default_backend gateways_tls

backend gateways_tls
    mode tcp
    balance leastconn
    default-server send-proxy-v2 check check-send-proxy inter 2s fall 2 rise 2
""")
        for n in tls_gateways:
            out.append(f"    server {n.name} {n.address}:{n.gateway_tls_port}\n")
    tls = f" ssl crt {b.web_tls_cert}" if b.web_tls_cert else ""
    proto = ("http-request set-header X-Forwarded-Proto https" if b.web_tls_cert
             else "http-request set-header X-Forwarded-Proto http")
    out.append(f"""
# Readers' browsers.  Sessions live in the database, so any web node may answer.
frontend web
    bind {b.bind}:{b.web_port}{tls}
    mode http
    option httplog
    option forwardfor
    {proto}
    default_backend webs

backend webs
    mode http
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    # Which node answered, for the operator (and the multi-node test).
    http-response set-header X-RDC-Node %s
    default-server check inter 2s fall 2 rise 2
""")
    for n in topo.with_role("web"):
        out.append(f"    server {n.name} {n.address}:{n.web_port}\n")
    out.append(f"""
# The center's own clients of Orthanc (uploaders, workers, web apps); not for sites.
frontend orthanc
    bind {b.address}:{b.orthanc_port}
    mode http
    default_backend orthancs

backend orthancs
    mode http
    balance roundrobin
    # Orthanc asks for its password: 401 is alive (no secret in this file).
    option httpchk GET /system
    http-check expect status 401
    default-server check inter 1s fall 2 rise 2
""")
    for n in topo.with_role("orthanc"):
        out.append(f"    server {n.name} {n.address}:{n.orthanc_http_port}\n")
    if b.stats_port:
        out.append(f"""
# HAProxy's own metrics for Prometheus, and its stats page.
frontend stats
    bind {b.address}:{b.stats_port}
    mode http
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats
""")
    return "".join(out)


def prometheus_targets(topo: Topology) -> dict[str, list[dict[str, Any]]]:
    """file_sd target groups per role (Prometheus ``file_sd_configs``)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for role, offset in METRICS_ROLE_OFFSETS.items():
        groups = [{"targets": [f"{n.address}:{n.metrics_port + offset}"],
                   "labels": {"node": n.name, "role": role}}
                  for n in topo.with_role(role) if n.metrics_port]
        if groups:
            out[role] = groups
    return out


def write(topo: Topology, out_dir: Path) -> list[Path]:
    """Write every file; returns their paths."""
    written: list[Path] = []

    def put(path: Path, text: str, mode: int = 0o644) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        tmp.replace(path)
        written.append(path)

    for node in topo.nodes:
        put(out_dir / node.name / "rdc.toml", render_rdc_toml(topo, node), 0o600)
        for role in node.roles:
            put(out_dir / node.name / f"rdc-{role}.service", render_unit(topo, node, role))
    put(out_dir / "balancer" / "haproxy.cfg", render_haproxy(topo))
    for role, groups in prometheus_targets(topo).items():
        put(out_dir / "prometheus" / f"targets-{role}.json", json.dumps(groups, indent=2) + "\n")
    return written
