"""Typed, frozen configuration: loading from TOML, environment secrets, validation.

The embedded default (``proxy/default.toml``, shipped as package data) is the base; a user
file overrides it section by section. Unknown sections or keys are errors, so a typo never
silently falls back to a default. ``validate()`` raises :class:`ConfigError` naming the
offending field as a dotted path (``backend.idle_timeout``).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from certmgr.acme.settings import AcmeSettings, parse_host_port
from certmgr.errors import PolicyError, SettingsError
from certmgr.policy.model import parse_measurement_id
from proxy.errors import ConfigError

__all__ = [
    "RECEIPTS_PATH",
    "AcmeConfig",
    "AdminConfig",
    "AttestationConfig",
    "BackendConfig",
    "CertificateConfig",
    "Config",
    "ConfigError",
    "DevCAConfig",
    "GovernanceConfig",
    "LimitsConfig",
    "ListenAddress",
    "LoggingConfig",
    "ReceiptsConfig",
    "SealingConfig",
    "ServerConfig",
    "TLSConfig",
    "default_toml",
    "load",
    "loads",
    "reloadable",
    "validate_governance",
]

GOVERNANCE_MODES = ("off", "monitor", "enforce")
GPU_MODES = ("off", "monitor", "enforce")  # [attestation] gpu
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}", re.ASCII)  # an Ethereum address, any case

# GET /v1/receipts/{id}: signed receipts of streamed responses, answered by the proxy.
RECEIPTS_PATH = "/v1/receipts/"


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A parsed listen address: TCP ``host``/``port`` or a unix socket ``path``."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: str, fld: str, *, allow_unix: bool = False) -> ListenAddress:
    """Parse ``HOST:PORT``, ``[V6]:PORT`` or (when allowed) ``unix:/path``."""
    if allow_unix and value.startswith("unix:"):
        path = value[5:]
        if not path.startswith("/"):
            raise ConfigError(fld, f"unix socket path must be absolute, got {value!r}")
        return ListenAddress(path=path)
    try:
        host, port = parse_host_port(value, fld)
    except SettingsError as e:
        raise ConfigError(e.field, e.message) from None
    return ListenAddress(host=host, port=port)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: tuple[str, ...] = ("0.0.0.0:8443",)
    workers: int = 0
    drain_grace: float = 30.0
    http_redirect_listen: tuple[str, ...] = ()

    @property
    def listen_addresses(self) -> tuple[ListenAddress, ...]:
        return tuple(parse_listen(v, "server.listen") for v in self.listen)

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class CertificateConfig:
    cert_file: str
    key_file: str
    # Name of the environment variable holding the key's password (encrypted PEM).
    key_password_env: str = ""

    def key_password(self) -> bytes | None:
        if not self.key_password_env:
            return None
        value = os.environ.get(self.key_password_env)
        if value is None:
            raise ConfigError(
                "tls.certificates.key_password_env",
                f"environment variable {self.key_password_env} is not set",
            )
        return value.encode()


@dataclass(frozen=True, slots=True)
class TLSConfig:
    certificates: tuple[CertificateConfig, ...] = ()
    strict_sni: bool = False
    min_version: str = "1.2"
    handshake_timeout: float = 10.0
    hsts_max_age: int = 0
    hsts_include_subdomains: bool = False


@dataclass(frozen=True, slots=True)
class DevCAConfig:
    enabled: bool = True
    names: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    leaf_lifetime: float = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class BackendConfig:
    url: str = "http://127.0.0.1:8000"
    pool_size: int = 0
    pool_idle_timeout: float = 30.0
    connect_timeout: float = 5.0
    response_header_timeout: float = 600.0
    idle_timeout: float = 600.0
    total_timeout: float = 0.0

    @property
    def unix_path(self) -> str:
        return self.url[5:] if self.url.startswith("unix:") else ""

    @property
    def base_url(self) -> str:
        """The URL the HTTP client targets (a placeholder host for unix sockets)."""
        return "http://backend" if self.unix_path else self.url.rstrip("/")


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_request_line: int = 8190
    max_header_size: int = 8190
    max_headers: int = 100
    max_chunk_line: int = 4096
    max_body_size: int = 100 * 1024 * 1024
    max_connections: int = 10000
    header_read_timeout: float = 10.0
    body_read_timeout: float = 60.0
    send_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    websocket_max_message: int = 16 * 1024 * 1024
    retain_free_memory: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: str = "127.0.0.1:9443"

    @property
    def address(self) -> ListenAddress | None:
        return parse_listen(self.listen, "admin.listen", allow_unix=True) if self.listen else None


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "INFO"
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class AcmeConfig(AcmeSettings):
    """[acme]: the ACME client's own settings (:class:`certmgr.acme.settings.AcmeSettings`,
    validated there) plus what the proxy does with them."""

    enabled: bool = False
    evidence_endpoint: bool = True  # GET /.well-known/tee/acme


@dataclass(frozen=True, slots=True)
class GovernanceConfig:
    """[governance]: on-chain measurement policy (docs/GOVERNANCE.md)."""

    mode: str = "off"
    rpc_urls: tuple[str, ...] = ()
    quorum: int = 1
    contract: str = ""
    chain_id: int = 0
    self_measurement: str = "auto"
    refresh_period: float = 15.0
    max_staleness: float = 120.0
    rpc_timeout: float = 5.0
    startup_wait: float = 300.0
    resume_when_allowed: bool = True
    embedded_chain: bool = False
    embedded_chain_listen: str = "127.0.0.1:8546"


@dataclass(frozen=True, slots=True)
class SealingConfig:
    """[sealing]: the TEE key stored private keys are sealed under."""

    provider: str = "insecure-development"
    gramine_key_path: str = "/dev/attestation/keys/_sgx_mrenclave"
    dstack_socket: str = "/var/run/dstack.sock"
    dstack_key_path: str = "teeproxy/sealing"
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class AttestationConfig:
    """[attestation]: TEE quotes, the RA-TLS certificate and the evidence endpoint."""

    provider: str = "auto"
    server_name: str = "attestation.teeproxy.invalid"
    cert_lifetime: float = 86400.0
    endpoint: bool = True
    quote_rate: float = 2.0
    quote_burst: int = 4
    quote_timeout: float = 10.0
    simulated_key_file: str = ""
    collateral_pccs_url: str = ""
    collateral_file: str = ""
    collateral_timeout: float = 10.0
    snp_endorsements: bool = True
    simulated_mr_config_id: str = ""
    configfs_tsm_dir: str = "/sys/kernel/config/tsm/report"
    gramine_dir: str = "/dev/attestation"
    dstack_socket: str = "/var/run/dstack.sock"
    nsm_device: str = "/dev/nsm"
    gpu: str = "monitor"


@dataclass(frozen=True, slots=True)
class ReceiptsConfig:
    """[receipts]: responses signed inside the TEE (docs/RECEIPTS.md)."""

    enabled: bool = True
    routes: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
    ttl: float = 600.0
    max_entries: int = 10000
    max_buffered_body: int = 8 * 1024 * 1024
    max_parse_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """[cluster]: replicas sharing one identity through etcd (docs/CLUSTER.md)."""

    enabled: bool = False
    name: str = ""
    member_id: str = ""
    etcd_endpoints: tuple[str, ...] = ()
    etcd_timeout: float = 5.0
    lease_ttl: int = 10
    resync_interval: float = 5.0
    key_wait: float = 120.0
    trust_dev_keys: tuple[str, ...] = ()
    max_value_size: int = 1024 * 1024
    shared_signing_key: bool = False
    advertise_url: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    state_dir: str = "/var/lib/teeproxy"
    server: ServerConfig = field(default_factory=ServerConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    dev_ca: DevCAConfig = field(default_factory=DevCAConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    acme: AcmeConfig = field(default_factory=AcmeConfig)
    sealing: SealingConfig = field(default_factory=SealingConfig)
    governance: GovernanceConfig = field(default_factory=GovernanceConfig)
    attestation: AttestationConfig = field(default_factory=AttestationConfig)
    receipts: ReceiptsConfig = field(default_factory=ReceiptsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def validate(self) -> Config:
        """Check cross-field rules; raise ConfigError naming the field. Returns self."""
        _validate(self)
        return self

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def reloadable(running: Config, new: Config) -> Config:
    """The running config with the sections a SIGHUP reload applies taken from ``new``."""
    return running.replace(
        tls=new.tls,
        dev_ca=new.dev_ca,
        backend=new.backend,
        limits=new.limits,
        logging=new.logging,
    )


@functools.cache
def default_toml() -> str:
    """The embedded default configuration file's text (read once per process)."""
    return resources.files("proxy").joinpath("default.toml").read_text(encoding="utf-8")


def load(path: str | os.PathLike[str]) -> Config:
    """Load a TOML file over the embedded defaults and validate it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("<file>", f"cannot read {p}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError("<file>", f"{p} is not UTF-8 text: {e.reason}") from e
    return loads(text, source=str(p))


def loads(text: str, *, source: str = "<string>") -> Config:
    """Parse TOML text over the embedded defaults and validate the result."""
    base = _parse(default_toml(), "<embedded default>")
    user = _parse(text, source)
    merged = _merge(base, user, "")
    cfg = _build(Config, merged, "")
    return cfg.validate()


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("<toml>", f"{source}: {e}") from e


def _merge(base: dict[str, Any], over: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(path, "unknown setting")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(path, "expected a table")
            out[key] = _merge(base[key], value, path + ".")
        else:
            out[key] = value
    return out


T = TypeVar("T")

_SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
}


def _build(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    kwargs: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(path, "unknown setting")
        kwargs[key] = _coerce(str(fields[key].type), value, path)
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            raise ConfigError(f"{prefix}{name}", "required setting missing")
    return cls(**kwargs)


def _coerce(type_name: str, value: Any, path: str) -> Any:
    nested = _NESTED.get(type_name)
    if nested is not None:
        if not isinstance(value, dict):
            raise ConfigError(path, "expected a table")
        return _build(nested, value, path + ".")
    if type_name.startswith("tuple["):
        inner = type_name[len("tuple[") : -len(", ...]")]
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {type(value).__name__}")
        return tuple(_coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value))
    accepted = _SCALARS[type_name]
    # bool is an int subclass: refuse true/false where a number is expected.
    if isinstance(value, bool) and type_name != "bool":
        raise ConfigError(path, f"expected {type_name}, got a boolean")
    if not isinstance(value, accepted):
        raise ConfigError(path, f"expected {type_name}, got {type(value).__name__}")
    return float(value) if type_name == "float" else value  # type: ignore[arg-type]


_NESTED: dict[str, type] = {
    "ServerConfig": ServerConfig,
    "TLSConfig": TLSConfig,
    "CertificateConfig": CertificateConfig,
    "DevCAConfig": DevCAConfig,
    "BackendConfig": BackendConfig,
    "LimitsConfig": LimitsConfig,
    "AdminConfig": AdminConfig,
    "LoggingConfig": LoggingConfig,
    "AcmeConfig": AcmeConfig,
    "SealingConfig": SealingConfig,
    "GovernanceConfig": GovernanceConfig,
    "AttestationConfig": AttestationConfig,
    "ReceiptsConfig": ReceiptsConfig,
    "ClusterConfig": ClusterConfig,
}


def _positive(value: float, fld: str, *, allow_zero: bool = False) -> None:
    if not math.isfinite(value):
        raise ConfigError(fld, f"must be a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(fld, f"must be {'>= 0' if allow_zero else '> 0'}, got {value:g}")


def _validate(cfg: Config) -> None:
    if not cfg.state_dir:
        raise ConfigError("state_dir", "must not be empty")
    s = cfg.server
    if not s.listen:
        raise ConfigError("server.listen", "at least one listen address is required")
    for i, v in enumerate(s.listen):
        parse_listen(v, f"server.listen[{i}]")
    for i, v in enumerate(s.http_redirect_listen):
        parse_listen(v, f"server.http_redirect_listen[{i}]")
    if s.workers < 0 or s.workers > 256:
        raise ConfigError("server.workers", f"must be 0 (one per CPU) to 256, got {s.workers}")
    _positive(s.drain_grace, "server.drain_grace", allow_zero=True)

    t = cfg.tls
    if t.min_version not in ("1.2", "1.3"):
        raise ConfigError("tls.min_version", f'must be "1.2" or "1.3", got {t.min_version!r}')
    _positive(t.handshake_timeout, "tls.handshake_timeout")
    _positive(t.hsts_max_age, "tls.hsts_max_age", allow_zero=True)
    for i, c in enumerate(t.certificates):
        if not c.cert_file:
            raise ConfigError(f"tls.certificates[{i}].cert_file", "must not be empty")
        if not c.key_file:
            raise ConfigError(f"tls.certificates[{i}].key_file", "must not be empty")
    if not t.certificates and not cfg.dev_ca.enabled and not cfg.acme.enabled:
        raise ConfigError(
            "tls.certificates", "no certificate configured and the development CA is disabled"
        )
    if cfg.dev_ca.enabled:
        if not cfg.dev_ca.names:
            raise ConfigError("dev_ca.names", "must list at least one name")
        if not 3600 <= cfg.dev_ca.leaf_lifetime <= 90 * 86400:
            raise ConfigError("dev_ca.leaf_lifetime", "must be between 1 hour and 90 days")

    b = cfg.backend
    if b.url.startswith("unix:"):
        if not b.url[5:].startswith("/"):
            raise ConfigError("backend.url", f"unix socket path must be absolute: {b.url!r}")
    else:
        parts = urlsplit(b.url)
        if parts.scheme not in ("http",) or not parts.hostname:
            raise ConfigError(
                "backend.url", f"expected http://HOST:PORT or unix:/path, got {b.url!r}"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError("backend.url", "must not carry a path, query or fragment")
        if parts.username is not None or parts.password is not None:
            raise ConfigError("backend.url", "must not carry credentials")
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad or out-of-range port
        except ValueError:
            raise ConfigError("backend.url", f"invalid port in {b.url!r}") from None
    if not 0 <= b.pool_size <= 100_000:
        raise ConfigError("backend.pool_size", f"must be 0-100000, got {b.pool_size}")
    _positive(b.pool_idle_timeout, "backend.pool_idle_timeout")
    _positive(b.connect_timeout, "backend.connect_timeout")
    _positive(b.response_header_timeout, "backend.response_header_timeout")
    _positive(b.idle_timeout, "backend.idle_timeout")
    _positive(b.total_timeout, "backend.total_timeout", allow_zero=True)

    lim = cfg.limits
    for name in ("max_request_line", "max_header_size", "max_headers", "max_connections"):
        if getattr(lim, name) < 1:
            raise ConfigError(f"limits.{name}", "must be >= 1")
    if not 32 <= lim.max_chunk_line <= 1024 * 1024:
        raise ConfigError("limits.max_chunk_line", "must be 32 bytes to 1 MiB")
    if lim.max_request_line < 64 or lim.max_header_size < 64:
        raise ConfigError("limits.max_header_size", "must be at least 64 bytes")
    _positive(lim.max_body_size, "limits.max_body_size", allow_zero=True)
    for name in (
        "header_read_timeout",
        "body_read_timeout",
        "send_timeout",
        "keepalive_timeout",
    ):
        _positive(getattr(lim, name), f"limits.{name}")
    if lim.websocket_max_message < 1:
        raise ConfigError("limits.websocket_max_message", "must be >= 1")
    if not 0 <= lim.retain_free_memory <= 2**31 - 1:
        raise ConfigError("limits.retain_free_memory", "must be 0 to 2147483647 bytes")

    addr = cfg.admin.address
    if addr is not None and not addr.is_unix:
        ip = ipaddress.ip_address("127.0.0.1" if addr.host == "localhost" else addr.host)
        if not ip.is_loopback:
            raise ConfigError("admin.listen", f"must be loopback or a unix socket, got {addr}")

    if cfg.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError("logging.level", f"unknown level {cfg.logging.level!r}")

    if cfg.acme.enabled:
        try:
            cfg.acme.validate()
        except SettingsError as e:
            raise ConfigError(f"acme.{e.field}", e.message) from None
    if cfg.sealing.provider not in ("insecure-development", "gramine", "dstack"):
        raise ConfigError(
            "sealing.provider", 'must be "insecure-development", "gramine" or "dstack"'
        )
    _positive(cfg.sealing.timeout, "sealing.timeout")

    at = cfg.attestation
    providers = ("auto", "configfs-tsm", "gramine", "dstack", "nitro", "simulated", "none")
    if at.provider not in providers:
        raise ConfigError("attestation.provider", f"must be one of {', '.join(providers)}")
    if not at.server_name or "/" in at.server_name or " " in at.server_name:
        raise ConfigError("attestation.server_name", "must be a DNS name")
    if not 600 <= at.cert_lifetime <= 86400:
        raise ConfigError("attestation.cert_lifetime", "must be between 600 s and 24 h")
    _positive(at.quote_rate, "attestation.quote_rate")
    _positive(at.quote_timeout, "attestation.quote_timeout")
    if not 1 <= at.quote_burst <= 1000:
        raise ConfigError("attestation.quote_burst", "must be 1-1000")
    if at.collateral_pccs_url and at.collateral_file:
        raise ConfigError(
            "attestation.collateral_file", "set collateral_pccs_url or this, not both"
        )
    if at.collateral_pccs_url and not at.collateral_pccs_url.startswith(("https://", "http://")):
        raise ConfigError("attestation.collateral_pccs_url", "must be an http(s) URL")
    _positive(at.collateral_timeout, "attestation.collateral_timeout")
    if at.simulated_mr_config_id:
        if at.provider != "simulated":
            raise ConfigError("attestation.simulated_mr_config_id", "only with provider simulated")
        try:
            if len(bytes.fromhex(at.simulated_mr_config_id)) != 48:
                raise ValueError
        except ValueError:
            raise ConfigError(
                "attestation.simulated_mr_config_id", "expected 96 hex digits"
            ) from None
    if at.gpu not in GPU_MODES:
        raise ConfigError("attestation.gpu", f"must be one of {', '.join(GPU_MODES)}")
    if at.gpu == "enforce" and at.provider == "none":
        raise ConfigError("attestation.gpu", "enforce needs an attestation provider")

    rc = cfg.receipts
    for i, route in enumerate(rc.routes):
        if not route.startswith("/") or "?" in route or "#" in route or " " in route:
            raise ConfigError(f"receipts.routes[{i}]", "must be a path starting with /")
        if route.startswith(RECEIPTS_PATH):
            raise ConfigError(f"receipts.routes[{i}]", f"{RECEIPTS_PATH} is served by the proxy")
    if not 1 <= rc.ttl <= 7 * 86400:
        raise ConfigError("receipts.ttl", "must be between 1 s and 7 days")
    if not 1 <= rc.max_entries <= 10_000_000:
        raise ConfigError("receipts.max_entries", "must be 1-10000000")
    if not 0 <= rc.max_buffered_body <= 1024**3:
        raise ConfigError("receipts.max_buffered_body", "must be 0-1 GiB")
    if not 0 <= rc.max_parse_bytes <= 64 * 1024**2:
        raise ConfigError("receipts.max_parse_bytes", "must be 0-64 MiB")

    if cfg.governance.mode != "off":
        validate_governance(cfg.governance)
    if cfg.cluster.enabled:
        validate_cluster(cfg)


_CLUSTER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}", re.ASCII)


def validate_cluster(cfg: Config) -> None:
    """The [cluster] rules; ConfigError names the field."""
    c = cfg.cluster
    if _CLUSTER_NAME.fullmatch(c.name) is None:
        raise ConfigError("cluster.name", "expected 1-63 of a-z 0-9 . _ - (starting a-z0-9)")
    if _CLUSTER_NAME.fullmatch(c.member_id) is None:
        raise ConfigError("cluster.member_id", "expected 1-63 of a-z 0-9 . _ - (starting a-z0-9)")
    if not c.etcd_endpoints:
        raise ConfigError("cluster.etcd_endpoints", "at least one etcd endpoint is required")
    for i, url in enumerate(c.etcd_endpoints):
        parts = urlsplit(url)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
        ):
            raise ConfigError(
                f"cluster.etcd_endpoints[{i}]", f"expected http(s)://host:port, got {url!r}"
            )
    _positive(c.etcd_timeout, "cluster.etcd_timeout")
    _positive(c.resync_interval, "cluster.resync_interval")
    _positive(c.key_wait, "cluster.key_wait")
    if not 2 <= c.lease_ttl <= 300:
        raise ConfigError("cluster.lease_ttl", "must be 2-300 s")
    if c.etcd_timeout * 2 > c.lease_ttl:
        raise ConfigError("cluster.etcd_timeout", "must be at most lease_ttl / 2")
    if not 64 * 1024 <= c.max_value_size <= 64 * 1024**2:
        raise ConfigError("cluster.max_value_size", "must be 64 KiB - 64 MiB")
    if cfg.governance.mode == "off":
        # The key goes only to replicas the on-chain policy allows now (docs/CLUSTER.md).
        raise ConfigError("governance.mode", "cluster mode needs governance (monitor or enforce)")
    if cfg.attestation.provider == "none":
        raise ConfigError("attestation.provider", "cluster mode needs attestation (key release)")
    if c.shared_signing_key and not cfg.receipts.enabled:
        raise ConfigError(
            "cluster.shared_signing_key", "a shared receipt signing key needs [receipts] enabled"
        )
    if c.advertise_url:
        parts = urlsplit(c.advertise_url)
        if (
            parts.scheme != "https"
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or len(c.advertise_url) > 200
        ):
            raise ConfigError(
                "cluster.advertise_url", f"expected https://host[:port], got {c.advertise_url!r}"
            )


def validate_governance(g: GovernanceConfig) -> None:
    """The [governance] rules; ConfigError names the field."""
    if g.mode not in GOVERNANCE_MODES:
        raise ConfigError(
            "governance.mode", f"must be one of {', '.join(GOVERNANCE_MODES)}, got {g.mode!r}"
        )
    if g.mode == "off":
        return
    if g.embedded_chain:
        if g.rpc_urls:
            raise ConfigError("governance.rpc_urls", "must be empty with embedded_chain = true")
        addr = parse_listen(g.embedded_chain_listen, "governance.embedded_chain_listen")
        if addr.host not in ("127.0.0.1", "::1", "localhost"):
            raise ConfigError("governance.embedded_chain_listen", "must be a loopback address")
    else:
        if not g.rpc_urls:
            raise ConfigError("governance.rpc_urls", "at least one RPC endpoint is required")
        for i, url in enumerate(g.rpc_urls):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"governance.rpc_urls[{i}]", f"expected http(s)://, got {url!r}")
        if len(set(g.rpc_urls)) != len(g.rpc_urls):
            raise ConfigError("governance.rpc_urls", "an endpoint is listed twice")
        if _ADDRESS.fullmatch(g.contract) is None:
            raise ConfigError("governance.contract", "expected 0x + 40 hex digits")
    n = len(g.rpc_urls) or 1
    if not 1 <= g.quorum <= n:
        raise ConfigError("governance.quorum", f"must be 1..{n} (the number of rpc_urls)")
    if g.chain_id < 0:
        raise ConfigError("governance.chain_id", "must be >= 0")
    for name in ("refresh_period", "max_staleness", "rpc_timeout", "startup_wait"):
        value = getattr(g, name)
        if not (value > 0 and value < float("inf")):
            raise ConfigError(f"governance.{name}", f"must be a positive number, got {value}")
    if g.refresh_period < 0.1:
        raise ConfigError("governance.refresh_period", "must be at least 0.1 s")
    if g.max_staleness < g.refresh_period:
        raise ConfigError("governance.max_staleness", "must be at least refresh_period")
    if g.rpc_timeout * 2 > g.max_staleness:
        # One round is two calls per endpoint; a round must fit in the staleness bound.
        raise ConfigError("governance.rpc_timeout", "must be at most max_staleness / 2")
    if g.self_measurement not in ("auto", "dev"):
        try:
            parse_measurement_id(g.self_measurement)
        except PolicyError as e:
            raise ConfigError("governance.self_measurement", str(e)) from None
