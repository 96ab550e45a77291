"""proxy.config: embedded defaults, overrides, validation naming the field, env secrets, the
sections a reload may change; the [attestation] and [governance] rules.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from proxy.config import (
    CertificateConfig,
    Config,
    ConfigError,
    GovernanceConfig,
    ListenAddress,
    default_toml,
    load,
    loads,
    parse_listen,
    reloadable,
    validate_governance,
)
from tests.helpers.governance import ADDR, ENFORCE
from tests.helpers.simulated_tee import simulated_config


def test_shipped_default_toml_loads_and_matches_the_dataclass_defaults() -> None:
    text = default_toml()
    assert "[server]" in text and "[backend]" in text
    cfg = loads(text, source="<default>")
    # The file and the dataclass defaults agree: no silent divergence between the two.
    assert cfg == Config()
    assert cfg.server.listen == ("0.0.0.0:8443",)
    assert cfg.tls.min_version == "1.2"
    assert cfg.tls.certificates == ()
    assert cfg.dev_ca.enabled
    assert cfg.admin.address == ListenAddress(host="127.0.0.1", port=9443)


def test_every_default_key_is_a_dataclass_field() -> None:
    """The default file documents every setting and nothing else."""
    data = tomllib.loads(default_toml())
    cfg = Config()
    for section, values in data.items():
        if not isinstance(values, dict):
            assert hasattr(cfg, section)
            continue
        sub = getattr(cfg, section)
        for key in values:
            assert hasattr(sub, key), f"{section}.{key}"


def test_empty_user_file_gives_defaults() -> None:
    assert loads("") == Config()


def test_user_values_override_section_by_section() -> None:
    cfg = loads(
        """
        state_dir = "/srv/tp"
        [server]
        workers = 3
        listen = ["127.0.0.1:8443", "[::1]:8443"]
        [backend]
        idle_timeout = 5
        url = "unix:/run/llm.sock"
        [[tls.certificates]]
        cert_file = "/c.pem"
        key_file = "/k.pem"
        """
    )
    assert cfg.state_dir == "/srv/tp"
    assert cfg.server.workers == 3
    assert cfg.server.worker_count == 3
    assert cfg.server.drain_grace == 30.0  # untouched key keeps its default
    assert cfg.server.listen_addresses == (
        ListenAddress(host="127.0.0.1", port=8443),
        ListenAddress(host="::1", port=8443),
    )
    assert str(cfg.server.listen_addresses[1]) == "[::1]:8443"
    # An int where a float is expected is accepted and converted.
    assert cfg.backend.idle_timeout == 5.0 and isinstance(cfg.backend.idle_timeout, float)
    assert cfg.backend.unix_path == "/run/llm.sock"
    assert cfg.backend.base_url == "http://backend"
    assert cfg.tls.certificates == (CertificateConfig(cert_file="/c.pem", key_file="/k.pem"),)


def test_admin_unix_socket_and_disabled() -> None:
    assert loads('[admin]\nlisten = "unix:/run/tp-admin.sock"').admin.address == ListenAddress(
        path="/run/tp-admin.sock"
    )
    assert loads('[admin]\nlisten = ""').admin.address is None


# (TOML text, dotted field the error must name)
_CLUSTER = """
[attestation]
provider = "simulated"
[governance]
mode = 'monitor'
rpc_urls = ["http://127.0.0.1:8545"]
contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
[cluster]
enabled = true
name = "fleet"
member_id = "r1"
etcd_endpoints = ["http://127.0.0.1:2379"]
"""


def test_cluster_section_is_valid_and_off_by_default() -> None:
    assert not loads("").cluster.enabled
    c = loads(_CLUSTER).cluster
    assert c.enabled and c.name == "fleet" and c.etcd_endpoints == ("http://127.0.0.1:2379",)
    assert not c.shared_signing_key and c.advertise_url == ""  # opt-in; derived from listen
    c = loads(
        _CLUSTER + 'shared_signing_key = true\nadvertise_url = "https://[::1]:8443"\n'
    ).cluster
    assert c.shared_signing_key and c.advertise_url == "https://[::1]:8443"


INVALID = [
    pytest.param("bogus = 1", "bogus", id="unknown-top-level-key"),
    pytest.param("[server]\nworkerz = 2", "server.workerz", id="unknown-key"),
    pytest.param("[nosuch]\na = 1", "nosuch", id="unknown-section"),
    pytest.param(
        "[[tls.certificates]]\ncert_file = 'a'\nkey_file = 'b'\nextra = 1",
        "tls.certificates[0].extra",
        id="unknown-key-in-array-of-tables",
    ),
    pytest.param(
        "[[tls.certificates]]\ncert_file = 'a'",
        "tls.certificates[0].key_file",
        id="missing-required-key",
    ),
    pytest.param('[server]\nworkers = "2"', "server.workers", id="str-for-int"),
    pytest.param("[server]\nworkers = 2.0", "server.workers", id="float-for-int"),
    pytest.param("[server]\nworkers = true", "server.workers", id="bool-for-int"),
    pytest.param("[server]\ndrain_grace = false", "server.drain_grace", id="bool-for-float"),
    pytest.param('[server]\ndrain_grace = "5"', "server.drain_grace", id="str-for-float"),
    pytest.param('[logging]\naccess_log = "yes"', "logging.access_log", id="str-for-bool"),
    pytest.param("[logging]\naccess_log = 1", "logging.access_log", id="int-for-bool"),
    pytest.param("state_dir = 5", "state_dir", id="int-for-str"),
    pytest.param('[server]\nlisten = "127.0.0.1:1"', "server.listen", id="str-for-list"),
    pytest.param("[server]\nlisten = [1]", "server.listen[0]", id="bad-list-element"),
    pytest.param("server = 1", "server", id="scalar-for-table"),
    pytest.param("[tls]\ncertificates = {a = 1}", "tls.certificates", id="table-for-list"),
    pytest.param('state_dir = ""', "state_dir", id="empty-state-dir"),
    pytest.param("[server]\nworkers = -1", "server.workers", id="workers-negative"),
    pytest.param("[server]\nworkers = 257", "server.workers", id="workers-too-many"),
    pytest.param("[server]\ndrain_grace = -1", "server.drain_grace", id="negative-drain"),
    pytest.param("[server]\ndrain_grace = nan", "server.drain_grace", id="nan-drain"),
    pytest.param("[tls]\nhandshake_timeout = 0", "tls.handshake_timeout", id="zero-timeout"),
    pytest.param("[tls]\nhandshake_timeout = inf", "tls.handshake_timeout", id="inf-timeout"),
    pytest.param("[tls]\nhsts_max_age = -1", "tls.hsts_max_age", id="negative-hsts"),
    pytest.param(
        "[backend]\nconnect_timeout = -0.5",
        "backend.connect_timeout",
        id="negative-connect-timeout",
    ),
    pytest.param("[backend]\nidle_timeout = -1", "backend.idle_timeout", id="negative-idle"),
    pytest.param(
        "[backend]\nresponse_header_timeout = 0",
        "backend.response_header_timeout",
        id="zero-header-timeout",
    ),
    pytest.param("[backend]\ntotal_timeout = -1", "backend.total_timeout", id="negative-total"),
    pytest.param(
        "[backend]\npool_idle_timeout = -1", "backend.pool_idle_timeout", id="negative-pool-idle"
    ),
    pytest.param("[backend]\npool_size = -1", "backend.pool_size", id="pool-size-negative"),
    pytest.param(
        "[limits]\nheader_read_timeout = -1",
        "limits.header_read_timeout",
        id="negative-header-read",
    ),
    pytest.param(
        "[limits]\nkeepalive_timeout = 0", "limits.keepalive_timeout", id="zero-keepalive"
    ),
    pytest.param("[limits]\nmax_body_size = -1", "limits.max_body_size", id="negative-body"),
    pytest.param("[limits]\nmax_headers = 0", "limits.max_headers", id="zero-headers"),
    pytest.param(
        "[limits]\nwebsocket_max_message = 0", "limits.websocket_max_message", id="zero-ws-message"
    ),
    pytest.param(
        "[limits]\nretain_free_memory = -1", "limits.retain_free_memory", id="negative-retain"
    ),
    pytest.param(
        "[limits]\nretain_free_memory = 2147483648", "limits.retain_free_memory", id="retain-int"
    ),
    pytest.param("[server]\nlisten = []", "server.listen", id="no-listener"),
    pytest.param('[server]\nlisten = ["8443"]', "server.listen[0]", id="listen-no-host"),
    pytest.param('[server]\nlisten = [":8443"]', "server.listen[0]", id="listen-empty-host"),
    pytest.param(
        '[server]\nlisten = ["example.com:443"]', "server.listen[0]", id="listen-hostname"
    ),
    pytest.param(
        '[server]\nlisten = ["127.0.0.1:65536"]', "server.listen[0]", id="listen-port-range"
    ),
    pytest.param(
        '[server]\nlisten = ["127.0.0.1:http"]', "server.listen[0]", id="listen-port-name"
    ),
    pytest.param(
        '[server]\nlisten = ["127.0.0.1:\u00b2"]',
        "server.listen[0]",
        id="listen-port-unicode-digit",
    ),
    pytest.param(
        '[server]\nlisten = ["::1:8443"]', "server.listen[0]", id="listen-ipv6-unbracketed"
    ),
    pytest.param(
        '[server]\nlisten = ["127.0.0.1:1", "nope"]', "server.listen[1]", id="second-listener-bad"
    ),
    pytest.param(
        '[server]\nhttp_redirect_listen = ["x:80"]',
        "server.http_redirect_listen[0]",
        id="redirect-listen-bad",
    ),
    pytest.param(
        '[server]\nlisten = ["unix:/tmp/x.sock"]', "server.listen[0]", id="listen-unix-not-allowed"
    ),
    pytest.param('[admin]\nlisten = "0.0.0.0:9443"', "admin.listen", id="admin-any"),
    pytest.param('[admin]\nlisten = "10.1.2.3:9443"', "admin.listen", id="admin-private"),
    pytest.param('[admin]\nlisten = "[::]:9443"', "admin.listen", id="admin-v6-any"),
    pytest.param('[admin]\nlisten = "unix:admin.sock"', "admin.listen", id="admin-unix-rel"),
    pytest.param('[backend]\nurl = "https://127.0.0.1:8000"', "backend.url", id="backend-https"),
    pytest.param('[backend]\nurl = "127.0.0.1:8000"', "backend.url", id="backend-no-scheme"),
    pytest.param('[backend]\nurl = "http://"', "backend.url", id="backend-no-host"),
    pytest.param('[backend]\nurl = "http://h:8000/v1"', "backend.url", id="backend-path"),
    pytest.param('[backend]\nurl = "http://h:8000?a=1"', "backend.url", id="backend-query"),
    pytest.param('[backend]\nurl = "http://h:99999"', "backend.url", id="backend-port-range"),
    pytest.param('[backend]\nurl = "http://h:abc"', "backend.url", id="backend-port-text"),
    pytest.param('[backend]\nurl = "http://u:pw@h:80"', "backend.url", id="backend-userinfo"),
    pytest.param('[backend]\nurl = "unix:run/llm.sock"', "backend.url", id="backend-unix-rel"),
    pytest.param('[tls]\nmin_version = "1.1"', "tls.min_version", id="min-version-1.1"),
    pytest.param('[tls]\nmin_version = "1.0"', "tls.min_version", id="min-version-1.0"),
    pytest.param('[tls]\nmin_version = "TLSv1.2"', "tls.min_version", id="min-version-name"),
    pytest.param("[tls]\nmin_version = 1.2", "tls.min_version", id="min-version-float"),
    pytest.param("[dev_ca]\nenabled = false", "tls.certificates", id="no-certificate-source"),
    pytest.param("[dev_ca]\nnames = []", "dev_ca.names", id="dev-ca-no-names"),
    pytest.param("[dev_ca]\nleaf_lifetime = 60.0", "dev_ca.leaf_lifetime", id="dev-ca-short"),
    pytest.param(
        "[[tls.certificates]]\ncert_file = ''\nkey_file = 'k'",
        "tls.certificates[0].cert_file",
        id="empty-cert-file",
    ),
    pytest.param('[logging]\nlevel = "LOUD"', "logging.level", id="log-level"),
    pytest.param("[server\nworkers = 1", "<toml>", id="toml-syntax"),
    pytest.param('[receipts]\nroutes = ["v1/x"]', "receipts.routes[0]", id="route-relative"),
    pytest.param('[receipts]\nroutes = ["/a", "/b?x"]', "receipts.routes[1]", id="route-query"),
    pytest.param(
        '[receipts]\nroutes = ["/v1/receipts/x"]', "receipts.routes[0]", id="route-own-path"
    ),
    pytest.param('[receipts]\nroutes = "/v1/x"', "receipts.routes", id="routes-not-list"),
    pytest.param("[receipts]\nttl = 0", "receipts.ttl", id="receipts-ttl-zero"),
    pytest.param("[receipts]\nttl = 700000.0", "receipts.ttl", id="receipts-ttl-long"),
    pytest.param("[receipts]\nmax_entries = 0", "receipts.max_entries", id="receipts-entries"),
    pytest.param(
        "[receipts]\nmax_buffered_body = -1", "receipts.max_buffered_body", id="receipts-buffer"
    ),
    pytest.param(
        "[receipts]\nmax_parse_bytes = 1e9", "receipts.max_parse_bytes", id="receipts-parse"
    ),
    pytest.param("[receipts]\nenabled = 1", "receipts.enabled", id="receipts-enabled-int"),
    pytest.param(
        _CLUSTER.replace('name = "fleet"', 'name = "Fleet!"'), "cluster.name", id="cl-name"
    ),
    pytest.param(
        _CLUSTER.replace('member_id = "r1"', 'member_id = ""'), "cluster.member_id", id="cl-member"
    ),
    pytest.param(
        _CLUSTER.replace('["http://127.0.0.1:2379"]', "[]"), "cluster.etcd_endpoints", id="cl-none"
    ),
    pytest.param(
        _CLUSTER.replace("http://127.0.0.1:2379", "etcd:2379"),
        "cluster.etcd_endpoints[0]",
        id="cl-url",
    ),
    pytest.param(_CLUSTER + "lease_ttl = 1\n", "cluster.lease_ttl", id="cl-ttl"),
    pytest.param(_CLUSTER + "etcd_timeout = 6.0\n", "cluster.etcd_timeout", id="cl-timeout"),
    pytest.param(
        _CLUSTER.replace("mode = 'monitor'", "mode = 'off'"), "governance.mode", id="cl-gov"
    ),
    pytest.param(
        _CLUSTER + "shared_signing_key = true\n[receipts]\nenabled = false\n",
        "cluster.shared_signing_key",
        id="cl-shared-no-receipts",
    ),
    pytest.param(
        _CLUSTER + 'advertise_url = "http://10.0.0.1:8443"\n',
        "cluster.advertise_url",
        id="cl-url-http",
    ),
    pytest.param(
        _CLUSTER + 'advertise_url = "https://10.0.0.1/x"\n',
        "cluster.advertise_url",
        id="cl-url-path",
    ),
    pytest.param(
        "[attestation]\nsimulated_mr_config_id = 'ab'",
        "attestation.simulated_mr_config_id",
        id="mrcfg",
    ),
]


@pytest.mark.parametrize(("text", "field"), INVALID)
def test_invalid_config_names_the_field(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert info.value.message


@pytest.mark.parametrize(
    "text",
    [
        '[server]\nlisten = ["127.0.0.1:0", "[::1]:8443", "localhost:1", "0.0.0.0:443"]',
        "[server]\nworkers = 0",
        "[server]\nworkers = 256",
        "[server]\ndrain_grace = 0",
        '[admin]\nlisten = "localhost:9443"',
        '[admin]\nlisten = "[::1]:9443"',
        '[admin]\nlisten = "127.0.0.5:9443"',
        '[backend]\nurl = "http://[::1]:8000"',
        '[backend]\nurl = "http://localhost"',
        '[backend]\nurl = "http://10.0.0.1:8000/"',
        '[tls]\nmin_version = "1.3"',
        "[limits]\nmax_body_size = 0",
        "[receipts]\nroutes = []\nmax_buffered_body = 0\nmax_parse_bytes = 0",
        "[receipts]\nenabled = false\nttl = 1\nmax_entries = 1",
        "[dev_ca]\nenabled = false\n[[tls.certificates]]\ncert_file = 'c'\nkey_file = 'k'",
    ],
)
def test_valid_edge_values_are_accepted(text: str) -> None:
    loads(text)


def test_parse_listen_forms() -> None:
    assert parse_listen("[::1]:0", "f") == ListenAddress(host="::1", port=0)
    assert parse_listen("unix:/a/b", "f", allow_unix=True) == ListenAddress(path="/a/b")
    assert str(ListenAddress(path="/a/b")) == "unix:/a/b"
    with pytest.raises(ConfigError) as info:
        parse_listen("[127.0.0.1]:80", "x.y")
    assert info.value.field == "x.y"


def test_unreadable_and_non_utf8_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "missing.toml")
    assert info.value.field == "<file>"
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError) as info:
        load(binary)
    assert info.value.field == "<file>"


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nworkers = 4\n")
    assert load(path).server.workers == 4


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.state_dir = "/x"  # type: ignore[misc]


# -- secrets from the environment ---------------------------------------------------------


def test_key_password_from_env_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_TEST_KEY_PASSWORD", "s3cret")
    cfg = loads(
        "[[tls.certificates]]\ncert_file = '/c'\nkey_file = '/k'\n"
        "key_password_env = 'TP_TEST_KEY_PASSWORD'"
    )
    [cert] = cfg.tls.certificates
    assert cert.key_password() == b"s3cret"
    # The secret itself is never part of the config object.
    assert "s3cret" not in repr(cfg)


def test_key_password_from_env_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TP_TEST_KEY_PASSWORD", raising=False)
    cert = CertificateConfig("/c", "/k", key_password_env="TP_TEST_KEY_PASSWORD")
    with pytest.raises(ConfigError) as info:
        cert.key_password()
    assert info.value.field == "tls.certificates.key_password_env"
    assert "TP_TEST_KEY_PASSWORD" in info.value.message


def test_no_password_env_means_unencrypted_key() -> None:
    assert CertificateConfig("/c", "/k").key_password() is None


# -- reload -------------------------------------------------------------------------------


def test_reload_applies_only_reloadable_sections() -> None:
    running = loads('state_dir = "/a"\n[server]\nlisten = ["127.0.0.1:4443"]\ndrain_grace = 5.0')
    new = loads(
        'state_dir = "/b"\n[server]\nlisten = ["127.0.0.1:0"]\ndrain_grace = 99.0\n'
        '[backend]\nurl = "http://127.0.0.1:9"\n[tls]\nhsts_max_age = 60\n'
        '[limits]\nmax_headers = 7\n[logging]\nlevel = "DEBUG"\n[admin]\nlisten = ""'
    )
    merged = reloadable(running, new)
    # Restart-only: the resolved listen ports, drain_grace, admin, state_dir.
    assert merged.server == running.server
    assert merged.admin == running.admin
    assert merged.state_dir == "/a"
    # Reloadable: everything else.
    assert merged.backend == new.backend
    assert merged.tls == new.tls
    assert merged.limits == new.limits
    assert merged.logging == new.logging
    assert merged.dev_ca == new.dev_ca


# -- [attestation] ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('provider = "sgx"', "attestation.provider"),
        ("cert_lifetime = 90000.0", "attestation.cert_lifetime"),
        ("cert_lifetime = 60.0", "attestation.cert_lifetime"),
        ('server_name = ""', "attestation.server_name"),
        ("quote_rate = 0.0", "attestation.quote_rate"),
        ("quote_burst = 0", "attestation.quote_burst"),
        ('gpu = "on"', "attestation.gpu"),
    ],
)
def test_attestation_config_errors_name_the_field(tmp_path: Path, extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as ei:
        simulated_config(tmp_path, extra)
    assert ei.value.field == field


def test_default_config_has_attestation_section() -> None:
    a = loads("").attestation
    assert a.provider == "auto" and a.cert_lifetime <= 86400
    assert a.gpu == "monitor"


# -- [governance] -------------------------------------------------------------------------


def test_default_config_has_governance_off() -> None:
    cfg = loads("")
    assert cfg.governance.mode == "off"
    assert cfg.governance.refresh_period == 15.0
    assert cfg.governance.max_staleness == 120.0


def test_loads_governance_section() -> None:
    cfg = loads(
        "[governance]\nmode = 'monitor'\n"
        f"rpc_urls = ['http://127.0.0.1:1', 'http://127.0.0.1:2']\nquorum = 2\ncontract = '{ADDR}'"
    )
    assert cfg.governance.rpc_urls == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert cfg.governance.quorum == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mode": "enforcing"}, "governance.mode"),
        ({"rpc_urls": ()}, "governance.rpc_urls"),
        ({"rpc_urls": ("ftp://x",)}, "governance.rpc_urls[0]"),
        ({"rpc_urls": ("http://a", "http://a")}, "governance.rpc_urls"),
        ({"contract": "0x1234"}, "governance.contract"),
        ({"quorum": 2}, "governance.quorum"),
        ({"quorum": 0}, "governance.quorum"),
        ({"refresh_period": 0.0}, "governance.refresh_period"),
        ({"max_staleness": 1.0, "refresh_period": 5.0}, "governance.max_staleness"),
        ({"rpc_timeout": float("inf")}, "governance.rpc_timeout"),
        ({"rpc_timeout": 61.0}, "governance.rpc_timeout"),
        ({"self_measurement": "0x12"}, "governance.self_measurement"),
        ({"embedded_chain": True}, "governance.rpc_urls"),
        (
            {"embedded_chain": True, "rpc_urls": (), "embedded_chain_listen": "0.0.0.0:8546"},
            "governance.embedded_chain_listen",
        ),
    ],
)
def test_invalid_governance_names_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_governance(dataclasses.replace(ENFORCE, **change))  # type: ignore[arg-type]
    assert info.value.field == field


def test_valid_governance_variants() -> None:
    validate_governance(ENFORCE)
    validate_governance(dataclasses.replace(ENFORCE, embedded_chain=True, rpc_urls=(), contract=""))
    validate_governance(dataclasses.replace(ENFORCE, self_measurement="0x" + "ab" * 32))
    validate_governance(GovernanceConfig())  # off: nothing else is checked
