"""The one settings object of the center.

Everything configurable lives here, read from ``RDC_*`` environment variables
or from an ``rdc.toml`` (``$RDC_CONFIG``, else ``$RDC_HOME/rdc.toml``, else
``./rdc.toml``).  All data lives under ``home`` so that two centers with
different homes and ports can run side by side on one machine.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_HOME = Path("~/.rdc")
#: Each role's offset from the metrics base port (``Settings.metrics_port``).
METRICS_ROLE_OFFSETS = {"gateway": 0, "worker": 1, "web": 2, "scheduler": 3}


def _config_file() -> Path | None:
    """Locate ``rdc.toml``; the home itself may only come from the environment."""
    explicit = os.environ.get("RDC_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    home = Path(os.environ.get("RDC_HOME", str(DEFAULT_HOME))).expanduser()
    for candidate in (home / "rdc.toml", Path.cwd() / "rdc.toml"):
        if candidate.is_file():
            return candidate
    return None


class Settings(BaseSettings):
    """Center configuration.  Paths are derived from ``home`` unless given."""

    model_config = SettingsConfigDict(env_prefix="RDC_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    home: Path = DEFAULT_HOME

    center_name: str = "Regional Diagnostic Center"
    #: The center's secrets directory; unset: ``$RDC_HOME/secrets``.  A center of
    #: several nodes has one CA, one TOTP key and one operator token, so every node
    #: points here at the same directory (a volume only the center's user can read).
    secrets_path: Path | None = None
    #: This node's name in a multi-node center (``rdc deploy``); unset: the host name.
    #: It names the gateway's spool (pacs_gateway/spool_owner.py), the worker and the
    #: metrics, so two nodes on one machine need names of their own.
    node_name: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    gateway_ae: str = Field(default="RDC_CENTER", min_length=1, max_length=16)
    gateway_host: str = "0.0.0.0"
    gateway_port: int = Field(default=11112, ge=1, le=65535)
    #: Processes sharing the gateway port (SO_REUSEPORT); 0 means one per CPU, up to 4.
    gateway_processes: int = Field(default=0, ge=0, le=64)
    #: The mutual-TLS DICOM port (PS3.15 BCP 195 profile).  Unset: 2762, the IANA
    #: "dicom-tls" port, in production, and off in development (so that test centers
    #: side by side never fight over one fixed port); 0 turns it off.
    gateway_tls_port: int | None = Field(default=None, ge=0, le=65535)
    #: Extra DNS names / IP addresses for the gateway's TLS certificate (besides this
    #: host's names and loopback), comma-separated: the names county sites connect to.
    gateway_tls_names: str = ""
    #: A TLS handshake on the TLS port must complete within this many seconds.
    gateway_tls_handshake_s: float = Field(default=10.0, gt=0, le=120)
    #: Lifetime of a site's TLS client certificate.
    site_cert_days: int = Field(default=730, ge=1, le=3650)
    #: The DICOM front door against hostile peers (pacs_gateway/admission.py).  Every
    #: limit is per gateway process: with N processes on one port (SO_REUSEPORT) the
    #: kernel spreads connections over them, so the center admits up to N times as many.
    #: A connection must deliver a complete A-ASSOCIATE-RQ within this many seconds
    #: of being accepted (after its TLS handshake, if any), or it is closed.
    gateway_associate_timeout_s: float = Field(default=5.0, gt=0, le=120)
    #: An established association with no incoming data for this long is aborted;
    #: so is one whose PDU stops arriving midway or whose peer stops reading.
    gateway_idle_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    #: Associations at once from the addresses of registered sites.
    gateway_max_associations: int = Field(default=32, ge=1, le=1024)
    #: Connections at once from addresses no site is registered at: a separate small
    #: pool (they can only be told why they are refused), so they never take the above.
    gateway_unregistered_connections: int = Field(default=4, ge=0, le=256)
    #: Connections at once from one peer address, registered or not.
    gateway_max_connections_per_address: int = Field(default=8, ge=1, le=1024)
    #: Refusals (capacity, garbage, timeouts, unknown AE or address) are audited per
    #: peer address and window: the first ``burst`` of each kind individually, the
    #: rest counted and written as one summary row per peer when the window ends.
    #: TCP load balancers in front of the gateway (addresses or networks, comma
    #: separated).  Their connections must begin with a PROXY protocol v2 header
    #: (HAProxy's ``send-proxy-v2``) naming the site's own address, which deny-by-default
    #: then checks; anyone else's header is refused as garbage.  Empty: none.
    gateway_proxy_protocol_from: str = ""
    gateway_refusal_audit_window_s: float = Field(default=60.0, gt=0)
    gateway_refusal_audit_burst: int = Field(default=5, ge=1, le=1000)
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8000, ge=1, le=65535)
    #: The built front end ``rdc web`` serves; unset: viewer/static (the production
    #: build).  The browser tests point it at viewer/static-test, the build with their
    #: ``window.__rdc`` hook (``npm run build:test``).
    web_static_dir: Path | None = None
    #: Web app processes (``RDC_WEB_WORKERS``); 0 = as many as CPUs, at most 4.  Each
    #: keeps only caches of its own (sessions, sign-in lockouts and audit live in the
    #: database), so a request may land in any of them; but the DICOMweb proxy's
    #: once-per-study view audit is remembered per process, so with several a study
    #: view is audited once per process.  One by default: a second gained nothing
    #: measurable on 2 cores (benchmarks/RESULTS.md).
    web_workers: int = Field(default=1, ge=0, le=64)
    #: Prometheus metrics (core/metrics.py): each role serves its own on ``metrics_host``
    #: at this base port plus the role's offset (:data:`METRICS_ROLE_OFFSETS`: gateway +0,
    #: worker +1, web +2, scheduler +3).  Unset: 9410 in production and off in development
    #: (so that test centers side by side never fight over fixed ports); 0 turns them off.
    #: The address must be one Prometheus reaches, and what it serves is unauthenticated
    #: (counts and latencies only, never patient data).
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535 - 3)

    orthanc_binary: str = "Orthanc"
    orthanc_plugins_dir: Path = Path("/usr/share/orthanc/plugins")
    orthanc_aet: str = Field(default="RDC_ARCHIVE", min_length=1, max_length=16)
    # Not Orthanc's own 8042/4242: Debian's orthanc package starts a system
    # service there, and the center runs its own Orthanc beside it.
    orthanc_http_port: int = Field(default=8043, ge=1, le=65535)
    orthanc_dicom_port: int = Field(default=4243, ge=1, le=65535)
    orthanc_user: str = "rdc"
    orthanc_password: str = ""
    orthanc_timeout_s: float = 30.0
    #: PostgreSQL URL for a shared Orthanc index (several Orthanc instances).
    orthanc_index_url: str = ""
    #: Where Orthanc keeps the DICOM files; unset: ``$RDC_HOME/orthanc/storage``.  With
    #: several Orthanc instances on one index, all of them must see one storage (a
    #: shared volume at this path).
    orthanc_storage_dir: Path | None = None
    #: The URL this node's clients (uploader, worker, web app) use for Orthanc's REST
    #: API; unset: this node's own Orthanc on loopback.  In a multi-node center: the
    #: balancer in front of the Orthanc instances, which fails over between them.
    orthanc_endpoint: str = ""
    #: Let Orthanc answer HTTP from other hosts (a balancer on another node); its
    #: password is required either way.  Orthanc cannot bind to one address, so its
    #: ports must then be firewalled to the center's own nodes.
    orthanc_remote_access: bool = False

    database_url: str = ""
    broker_url: str = ""

    #: Below this much free disk in the spool the gateway answers 0xA700.
    spool_min_free_mb: int = Field(default=512, ge=0)
    #: What one DICOM association may make the gateway receive (pacs_gateway/receive_limits.py).
    #: The Maximum Length announced in A-ASSOCIATE-AC: senders cut P-DATA to this size.
    gateway_pdu_size_kb: int = Field(default=1024, ge=16, le=65536)
    #: A PDU whose header declares more than this aborts the association before its
    #: body is read (a sender may exceed the announced size a little, never 2**32).
    gateway_pdu_limit_mb: int = Field(default=16, ge=1, le=1024)
    #: One C-STORE dataset as received, at most: a larger one aborts the association.
    #: 2 GiB covers tomosynthesis and long multi-frame objects; Orthanc holds each
    #: instance in memory while it stores it.
    gateway_dataset_limit_mb: int = Field(default=2048, ge=1, le=1024 * 1024)
    #: A deflated dataset may inflate to this much (0: the dataset limit), and past
    #: 64 MiB to at most this many times its deflated size (0: no ratio limit);
    #: beyond either it is refused with 0xA700.
    gateway_inflated_limit_mb: int = Field(default=0, ge=0, le=1024 * 1024)
    gateway_inflate_ratio_limit: int = Field(default=100, ge=0)
    upload_workers: int = Field(default=4, ge=1, le=64)
    upload_retry_max_s: float = Field(default=30.0, gt=0)
    #: Default inactivity window after which a study counts as complete.
    study_inactivity_s: float = Field(default=120.0, gt=0)
    monitor_interval_s: float = Field(default=2.0, gt=0)
    #: ``rdc up`` restarts a process that exits while it is not stopping (systemd's
    #: ``Restart=on-failure``): first after the base delay, doubling up to the cap; a
    #: process that stayed up ``stable_after`` starts again from the base delay.
    supervisor_restart_base_s: float = Field(default=1.0, gt=0)
    supervisor_restart_max_s: float = Field(default=30.0, gt=0)
    supervisor_stable_after_s: float = Field(default=60.0, gt=0)
    #: ... and gives a process up after this many failures within the window (like
    #: ``StartLimitBurst`` / ``StartLimitIntervalSec``); the others keep serving.
    supervisor_give_up_failures: int = Field(default=5, ge=1, le=1000)
    supervisor_give_up_window_s: float = Field(default=300.0, gt=0)
    #: A restarted process that does not listen on its port within this is killed,
    #: and that counts as a failure.
    supervisor_start_timeout_s: float = Field(default=120.0, gt=0)
    routing_rules: Path | None = None
    #: A job queued or running longer than this is handed to the queue again.
    job_stale_after_s: float = Field(default=900.0, gt=0)
    job_time_limit_s: int = Field(default=600, gt=0)
    #: A running job touched more recently than this belongs to a live worker (a
    #: batch claimed it); its message waits.  After it, the job may be run again.
    job_lease_s: float = Field(default=60.0, gt=0)
    #: Where inference runs: ``auto`` takes TensorRT, then CUDA, then the CPU,
    #: whichever ONNX Runtime has; ``cuda`` refuses to start without a GPU.
    ai_device: Literal["auto", "cpu", "cuda"] = "auto"
    #: CPU threads per ONNX Runtime session; 0 takes the cores this process may use.
    ai_threads: int = Field(default=0, ge=0, le=256)
    #: How long an inference worker waits for more jobs of the same model to fill a batch.
    ai_batch_wait_ms: int = Field(default=50, ge=0, le=10_000)
    #: Register the models shipped with the project (demonstration weights) on first
    #: use.  In production they are registered disabled; an operator enables a model.
    ai_register_shipped: bool = True

    #: Algorithm of new reader keys and of the center's CA: SM2 with SM3 (Chinese
    #: national algorithms), Ed25519, or ECDSA P-256 (both with SHA-256).
    signing_algorithm: Literal["sm2", "ed25519", "ecdsa-p256"] = "ed25519"
    #: Lifetime of a reader certificate issued by the center's CA.
    reader_cert_days: int = Field(default=730, ge=1, le=3650)
    #: Pathology frozen sections: the on-duty rota (usernames, in paging order; empty:
    #: every active pathologist of the case's site, by name), and how long a page may go
    #: unanswered (no slide opened) before the next pathologist on the rota is paged.
    pathology_on_duty: list[str] = Field(default_factory=list)
    pathology_frozen_escalation_s: float = Field(default=600.0, gt=0)
    #: The lab center (lab/).  Orders (OML^O21, ORM^O01) from county sites arrive over
    #: MLLP on this port, and analyzers send ASTM E1394 (LIS2-A2) on the other; both
    #: listen on ``lab_host`` and are started by ``rdc up`` (``rdc lab listen``).  0 turns
    #: a listener off.
    lab_host: str = "0.0.0.0"
    lab_mllp_port: int = Field(default=2575, ge=0, le=65535)
    lab_astm_port: int = Field(default=5700, ge=0, le=65535)
    #: The test catalog (LOINC codes, ranges, critical, stability, delta and HIL limits);
    #: unset: the shipped lab/catalog.toml.
    lab_catalog: Path | None = None
    #: Critical values: who is told at each tier ("site": the site's accounts, its HL7
    #: endpoint and the webhook; "center": the center's lab reviewers and the webhook),
    #: and how long each tier waits for an acknowledgement before the next one.
    lab_critical_tiers: list[str] = Field(default_factory=lambda: ["site", "site", "center"])
    lab_critical_escalation_s: float = Field(default=300.0, gt=0)
    #: Where pages for critical results and frozen sections are POSTed as JSON besides
    #: the in-app notice (a paging system's webhook); unset: in-app only.
    notify_webhook_url: str | None = None
    #: Delivery of signed results: first retry after this, doubling up to the cap,
    #: and given up (dead-letter list) once a delivery is older than the age limit.
    delivery_retry_base_s: float = Field(default=30.0, gt=0)
    delivery_retry_max_s: float = Field(default=3600.0, gt=0)
    delivery_max_age_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    #: How long a delivery keeps the association open for the site's storage
    #: commitment report (N-EVENT-REPORT) after its N-ACTION request.
    delivery_commit_wait_s: float = Field(default=10.0, ge=0)
    #: The port of the center's storage commitment SCP (``rdc commitment``,
    #: delivery/commitment_scp.py), where a site's PACS opens an association of its own
    #: to send the N-EVENT-REPORT that did not come within the wait above; many PACS
    #: report minutes later.  Unset: the gateway port + 2 (a second port beside the
    #: gateway's, so it needs no own default to remember); 0 turns it off.
    commitment_port: int | None = Field(default=None, ge=0, le=65535)

    #: Web sign-in.  A session ends after this long without a request (idle) ...
    session_idle_timeout_s: float = Field(default=30 * 60.0, gt=0)
    #: ... and in any case this long after sign-in (absolute lifetime), so a stolen
    #: cookie or a workstation left signed in is good for a bounded time only.
    session_max_age_s: float = Field(default=12 * 3600.0, gt=0)
    #: After this many failed sign-ins in a row for one username from one client
    #: address, that pair (not the whole account) is locked for ``login_lockout_s``;
    #: each further lockout of the pair doubles the wait, up to ``login_lockout_max_s``
    #: (see :mod:`viewer.login_throttle`).
    login_max_failures: int = Field(default=5, ge=1, le=100)
    login_lockout_s: float = Field(default=15 * 60.0, gt=0)
    login_lockout_max_s: float = Field(default=24 * 3600.0, gt=0)
    #: Against guessing spread over many addresses: once a username collected this many
    #: failures within ``login_account_window_s``, it is refused from addresses it has
    #: never signed in from, until the window ends.  Its familiar addresses still work.
    login_account_max_failures: int = Field(default=50, ge=1, le=100_000)
    login_account_window_s: float = Field(default=3600.0, gt=0)
    #: Reverse proxies (IP addresses or networks, comma separated) whose
    #: X-Forwarded-For and X-Forwarded-Proto the web app believes.  Empty: none, and
    #: the client address is the TCP peer's.
    trusted_proxies: str = ""
    #: ``Secure`` flag of the session cookie.  Unset: on in production (served over
    #: HTTPS behind the reverse proxy), off in development, where the web app listens
    #: on plain http://127.0.0.1 and a browser would never send back a Secure cookie.
    session_cookie_secure: bool | None = None
    #: Image access through the DICOMweb proxy is audited once per user and study
    #: within this window (with the number of requests it covered), so that a
    #: 300-frame stack is one audit record, not 300.
    dicomweb_audit_window_s: float = Field(default=600.0, gt=0)
    #: Seconds between signed checkpoints of the audit chain's head, written by the
    #: gateway's primary process to ``audit/checkpoints.jsonl``; 0 turns the timer off
    #: (``rdc audit checkpoint`` still works).
    audit_checkpoint_s: float = Field(default=300.0, ge=0)
    #: Where audit events go as DICOM audit messages (PS3.15 A.5) over syslog:
    #: ``udp://host:514``, ``tcp://host:601`` or ``tls://host:6514``.  Empty: off.
    atna_syslog_url: str = ""
    #: AuditSourceID of those messages; empty: this machine's host name.
    atna_source_id: str = ""
    #: For ``tls://``: the CA bundle the audit repository's certificate is checked
    #: against (empty: the system's), and this node's client certificate and key.
    atna_tls_ca_file: Path | None = None
    atna_tls_cert_file: Path | None = None
    atna_tls_key_file: Path | None = None
    #: How often the exporter looks for new audit records to send.
    atna_poll_s: float = Field(default=2.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _config_file()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @field_validator("trusted_proxies", "gateway_proxy_protocol_from")
    @classmethod
    def _check_proxies(cls, value: str, info: ValidationInfo) -> str:
        for entry in (e.strip() for e in value.split(",")):
            if not entry:
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                name = f"RDC_{(info.field_name or '').upper()}"
                raise ValueError(f"{name}: {entry!r} is not an IP address or "
                                 "network (e.g. 127.0.0.1, 10.0.0.0/8, ::1)") from None
        return value

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'rdc.sqlite3'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if self.environment == "production":
            self._refuse_insecure_defaults()
        return self

    def _refuse_insecure_defaults(self) -> None:
        problems = []
        if self.database_url.startswith("sqlite"):
            problems.append("RDC_DATABASE_URL must point at PostgreSQL in production")
        if self.broker_url.startswith("filesystem"):
            problems.append("RDC_BROKER_URL must point at Redis or RabbitMQ in production")
        if problems:
            raise ValueError("; ".join(problems))

    # Derived locations -------------------------------------------------
    @property
    def ca_dir(self) -> Path:
        """The center's certificate authority (its key readable by the center only)."""
        return self.secrets_dir / "ca"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def orthanc_dir(self) -> Path:
        return self.home / "orthanc"

    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def secrets_dir(self) -> Path:
        """The center's secrets (its CA, the TOTP key, the operator token): one set per
        center, so several nodes must all read the same (``secrets_path``)."""
        return self.secrets_path or self.home / "secrets"

    @property
    def audit_dir(self) -> Path:
        """Signed audit checkpoints and the audit export cursor, outside the database."""
        return self.home / "audit"

    @property
    def cookie_secure(self) -> bool:
        """Whether the session cookie carries ``Secure`` (see ``session_cookie_secure``)."""
        if self.session_cookie_secure is not None:
            return self.session_cookie_secure
        return self.environment == "production"

    @property
    def trusted_proxy_list(self) -> list[str]:
        """``trusted_proxies`` as a list of addresses and networks."""
        return [e.strip() for e in self.trusted_proxies.split(",") if e.strip()]

    @property
    def gateway_balancer_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """``gateway_proxy_protocol_from`` as networks."""
        return [ipaddress.ip_network(e.strip(), strict=False)
                for e in self.gateway_proxy_protocol_from.split(",") if e.strip()]

    @property
    def gateway_tls_listen_port(self) -> int | None:
        """The TLS port the gateway listens on, or None when TLS is off."""
        if self.gateway_tls_port is None:
            return 2762 if self.environment == "production" else None
        return self.gateway_tls_port or None

    def metrics_port_for(self, role: str) -> int | None:
        """The port ``role`` (a key of :data:`METRICS_ROLE_OFFSETS`) serves its metrics on,
        or None when metrics are off; see ``metrics_port``."""
        offset = METRICS_ROLE_OFFSETS[role]
        base = self.metrics_port
        if base is None:
            base = 9410 if self.environment == "production" else 0
        return base + offset if base else None

    @property
    def commitment_listen_port(self) -> int | None:
        """The storage commitment SCP's port, or None when it is off."""
        if self.commitment_port is None:
            return self.gateway_port + 2 if self.gateway_port <= 65533 else None
        return self.commitment_port or None

    @property
    def gateway_tls_name_list(self) -> list[str]:
        """``gateway_tls_names`` as a list."""
        return [n.strip() for n in self.gateway_tls_names.split(",") if n.strip()]

    @property
    def gateway_process_count(self) -> int:
        if self.gateway_processes:
            return self.gateway_processes
        return max(1, min(4, os.cpu_count() or 1))

    @property
    def orthanc_url(self) -> str:
        if self.orthanc_endpoint:
            return self.orthanc_endpoint.rstrip("/")
        return f"http://127.0.0.1:{self.orthanc_http_port}"

    @property
    def node(self) -> str:
        """This node's name: ``node_name``, else the host name."""
        return self.node_name or socket.gethostname()

    def routing_rules_path(self) -> Path:
        if self.routing_rules is not None:
            return self.routing_rules.expanduser()
        return Path(__file__).resolve().parent.parent / "pacs_gateway" / "routing_rules.toml"

    def ensure_dirs(self) -> None:
        for d in (self.home, self.spool_dir, self.orthanc_dir, self.broker_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def orthanc_credentials(self) -> tuple[str, str]:
        """The Orthanc password: configured, or generated once and kept under home."""
        if self.orthanc_password:
            return self.orthanc_user, self.orthanc_password
        self.ensure_dirs()
        path = self.secrets_dir / "orthanc-password"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24))
        self.orthanc_password = path.read_text().strip()
        return self.orthanc_user, self.orthanc_password

    def public_summary(self) -> dict[str, Any]:
        """Settings safe to print (no secrets)."""
        data = self.model_dump(mode="json", exclude={"orthanc_password"})
        data["database_url"] = _redact(self.database_url)
        data["broker_url"] = _redact(self.broker_url)
        return data


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests call ``get_settings.cache_clear()``."""
    return Settings()
