"""proxy.wellknown: the RA-TLS certificate life cycle and the nonce endpoint, in process.

A worker on loopback with the simulated provider (the only TEE-less one that exists here):
the RA-TLS certificate is served by SNI next to the ordinary one, and the evidence binds the
certificate of the connection it was asked on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from certmgr.attest.ratls import parse_certificate
from certmgr.attest.ratls_store import ratls_dir, ratls_renewal_due
from certmgr.attest.verify import (
    Reason,
    VerifyOptions,
    load_dev_key,
    verify_certificate,
    verify_evidence,
)
from certmgr.keys import InsecureDevSealer
from proxy.config import Config, ConfigError, loads
from proxy.control.certificates import next_renewal, prepare_certificates
from proxy.dataplane.attestation import make_endpoint
from proxy.dataplane.certstore import build_store
from proxy.dataplane.worker import Worker
from proxy.runtime import build_runtime
from tests.conftest import store_from_leaf

NAME = "attest.test"


def _cfg(state: Path, extra: str = "") -> Config:
    """A config with the simulated provider; ``extra`` lines override [attestation] keys."""
    keys = {"provider": '"simulated"', "server_name": f'"{NAME}"'}
    for line in extra.splitlines():
        k, _, v = line.partition("=")
        keys[k.strip()] = v.strip()
    body = "\n".join(f"{k} = {v}" for k, v in keys.items())
    return loads(
        f'state_dir = "{state}"\n[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\n'
        '[admin]\nlisten = ""\n[logging]\naccess_log = false\n'
        f"[attestation]\n{body}\n"
    )


def _prepare(state: Path, extra: str = "") -> tuple[Config, Any]:
    cfg = _cfg(state, extra)
    sealer = InsecureDevSealer()
    prepare_certificates(cfg, build_runtime(cfg, prepare=True, sealer=sealer))
    return cfg, build_store(cfg, sealer)


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    cfg, store = await asyncio.to_thread(
        _prepare, tmp_path / "state", "quote_rate = 0.01\nquote_burst = 3\n"
    )
    w = Worker(cfg, store, reuse_port=False)
    w.attestation = make_endpoint(
        cfg,
        w.holder,
        await asyncio.to_thread(build_runtime, cfg, prepare=False, sealer=InsecureDevSealer()),
    )
    await w.start()
    yield w
    await w.drain(grace=1.0)


def _client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _get(port: int, sni: str, target: str, method: str = "GET") -> tuple[int, bytes, bytes]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=_client(), server_hostname=sni
    )
    sslobj = writer.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True)
    request = f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
    writer.write((request + "Connection: close\r\n\r\n").encode())
    raw = await reader.read(-1)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, der


def _dev_opts(state: Path) -> VerifyOptions:
    key = load_dev_key((ratls_dir(state) / "dev-attestation-key.pub.pem").read_bytes())
    return VerifyOptions(trusted_dev_keys=(key,), any_measurement=True)


async def test_ratls_by_sni_and_evidence_binds_connection(worker: Worker) -> None:
    port = worker.ports[0]
    state = Path(worker.cfg.state_dir)
    opts = await asyncio.to_thread(_dev_opts, state)
    nonce = "ab" * 16
    # Asked by the attestation name: the RA-TLS certificate, and evidence naming its key.
    status, body, der = await _get(port, NAME, f"/.well-known/tee/attestation?nonce={nonce}")
    assert status == 200
    v = verify_certificate(der, None, opts)
    assert v.trusted, v.failures
    spki_hash = parse_certificate(der).spki_sha256
    ev = verify_evidence(body, bytes.fromhex(nonce), spki_hash, None, opts)
    assert ev.trusted, ev.failures
    doc = json.loads(body)
    assert {"version", "tee", "provider", "quote", "claims", "claims_view", "gpu"} <= set(doc)
    assert doc["tee"] == "tdx" and doc["provider"] == "simulated"

    # Asked by another name: the development certificate, and evidence naming *its* key.
    status, body2, der2 = await _get(
        port, "localhost", f"/.well-known/tee/attestation?nonce={nonce}"
    )
    assert status == 200
    assert der2 != der
    with pytest.raises(Exception):  # noqa: B017 - not an RA-TLS certificate at all
        parse_certificate(der2)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    dev_spki = (
        x509.load_der_x509_certificate(der2)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    dev_hash = hashlib.sha256(dev_spki).digest()
    assert verify_evidence(body2, bytes.fromhex(nonce), dev_hash, None, opts).trusted
    # Evidence asked on the development-certificate connection does not vouch for RA-TLS.
    assert verify_evidence(body2, bytes.fromhex(nonce), spki_hash, None, opts).reasons == (
        Reason.SPKI,
    )


async def test_rate_limit_and_errors(worker: Worker) -> None:
    port = worker.ports[0]
    path = "/.well-known/tee/attestation?nonce=" + "01" * 8
    statuses = [(await _get(port, NAME, path))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]  # burst 3, then (at 0.01/s) no token
    assert (await _get(port, NAME, "/.well-known/tee/attestation?nonce=0102"))[0] == 400
    assert (await _get(port, NAME, path, method="POST"))[0] == 405


async def test_no_provider_answers_503(tmp_path: Path) -> None:
    cfg, store = await asyncio.to_thread(_prepare, tmp_path / "state")
    w = Worker(cfg, store, reuse_port=False)
    none_cfg = cfg.replace(attestation=cfg.attestation.__class__(provider="none"))
    w.attestation = make_endpoint(
        none_cfg,
        w.holder,
        await asyncio.to_thread(build_runtime, none_cfg, prepare=False, sealer=InsecureDevSealer()),
    )
    await w.start()
    try:
        status, body, _ = await _get(
            w.ports[0], NAME, "/.well-known/tee/attestation?nonce=" + "01" * 8
        )
    finally:
        await w.drain(grace=1.0)
    assert status == 503 and b"attestation_unavailable" in body


def test_renewal_at_two_thirds_and_on_change(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg, _ = _prepare(state, "cert_lifetime = 3600.0\n")
    pem1 = (ratls_dir(state) / "ratls.pem").read_bytes()
    due = ratls_renewal_due(state)
    assert due is not None
    nb = parse_certificate(pem1).not_before
    assert abs((due - nb).total_seconds() - 2400) < 2
    nr = next_renewal(cfg)
    assert nr is not None and nr <= due
    sealer = InsecureDevSealer()
    prepare_certificates(
        cfg, build_runtime(cfg, prepare=True, sealer=sealer), now=due - dt.timedelta(seconds=10)
    )
    assert (ratls_dir(state) / "ratls.pem").read_bytes() == pem1  # not due yet
    prepare_certificates(
        cfg, build_runtime(cfg, prepare=True, sealer=sealer), now=due + dt.timedelta(seconds=1)
    )
    pem2 = (ratls_dir(state) / "ratls.pem").read_bytes()
    assert pem2 != pem1
    assert parse_certificate(pem2).spki_der != parse_certificate(pem1).spki_der  # fresh key
    renamed = _cfg(state, 'cert_lifetime = 3600.0\nserver_name = "other.test"\n')
    prepare_certificates(renamed, build_runtime(renamed, prepare=True, sealer=sealer))
    assert (
        parse_certificate((ratls_dir(state) / "ratls.pem").read_bytes()).claims["hostname"]
        == "other.test"
    )
    store = build_store(renamed, sealer)
    assert store.select("other.test") is not None
    assert store.select("other.test").source == "ratls"  # type: ignore[union-attr]
    assert store.default is not None and store.default.source != "ratls"


def test_expired_ratls_does_not_break_the_store(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg, _ = _prepare(state, "cert_lifetime = 600.0\n")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    store = build_store(cfg, InsecureDevSealer(), now=later)
    assert [e.source for e in store.entries] == ["dev-ca"]


def test_key_stored_sealed_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _prepare(state)
    for f in ratls_dir(state).iterdir():
        assert b"PRIVATE KEY" not in f.read_bytes(), f
    assert (ratls_dir(state) / "ratls.key.sealed").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('provider = "sgx"', "attestation.provider"),
        ("cert_lifetime = 90000.0", "attestation.cert_lifetime"),
        ("cert_lifetime = 60.0", "attestation.cert_lifetime"),
        ('server_name = ""', "attestation.server_name"),
        ("quote_rate = 0.0", "attestation.quote_rate"),
        ("quote_burst = 0", "attestation.quote_burst"),
    ],
)
def test_config_validation(tmp_path: Path, extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as ei:
        _cfg(tmp_path, extra)
    assert ei.value.field == field


def test_unavailable_provider_fails_closed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "state").replace()
    bad = cfg.replace(
        attestation=cfg.attestation.__class__(
            provider="gramine", gramine_dir=str(tmp_path / "none")
        )
    )
    with pytest.raises(ConfigError) as ei:
        prepare_certificates(bad, build_runtime(bad, prepare=True, sealer=InsecureDevSealer()))
    assert ei.value.field == "attestation.provider"


def test_default_config_has_attestation_section() -> None:
    a = loads("").attestation
    assert a.provider == "auto" and a.cert_lifetime <= 86400


_ = trustme, store_from_leaf


async def test_evidence_attests_acme_account_and_keys(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import proxy.dataplane.attestation
    from proxy.config import AcmeConfig

    doc = {
        "account_uri": "https://ca.test/acct/7",
        "certificate_keys": [{"spki_sha256": "11" * 32}, {"spki_sha256": "22" * 32}],
        "format": "teeproxy-acme-evidence/1",
    }
    monkeypatch.setattr(
        proxy.dataplane.attestation, "read_evidence", lambda _s: json.dumps(doc).encode()
    )
    endpoint = worker.attestation
    endpoint.cfg = endpoint.cfg.replace(acme=AcmeConfig(enabled=True))
    status, body, der = await _get(
        worker.ports[0], NAME, "/.well-known/tee/attestation?nonce=" + "05" * 8
    )
    assert status == 200
    opts = await asyncio.to_thread(_dev_opts, Path(worker.cfg.state_dir))
    v = verify_evidence(body, b"\x05" * 8, parse_certificate(der).spki_sha256, None, opts)
    assert v.trusted, v.failures
    claims = v.to_json()["claims"]
    assert claims["acme-account"] == "https://ca.test/acct/7"
    assert claims["acme-keys"] == [[1, "11" * 32], [1, "22" * 32]]


# -- the receipt signing key in the attestation (issue 6) ------------------------------------


def _receipts_cfg(state: Path, enabled: bool) -> Config:
    cfg = _cfg(state)
    return cfg.replace(receipts=cfg.receipts.__class__(enabled=enabled))


def test_ratls_certificate_binds_the_signing_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from certmgr.receipts.signing import KEY_FILE, SEALING_LABEL, load_signing_key, signing_dir

    caplog.set_level(logging.DEBUG)
    state = tmp_path / "state"
    sealer = InsecureDevSealer()
    cfg = _receipts_cfg(state, True)
    assert cfg.receipts.enabled  # the default
    prepare_certificates(cfg, build_runtime(cfg, prepare=True, sealer=sealer))
    address = load_signing_key(state, sealer).address
    pem = (ratls_dir(state) / "ratls.pem").read_bytes()
    assert parse_certificate(pem).claims["signing-address"] == "0x" + address.hex()
    v = verify_certificate(pem, None, _dev_opts(state))
    assert v.trusted and v.signing_address == address
    # Restart: the same key, address and certificate.
    prepare_certificates(cfg, build_runtime(cfg, prepare=True, sealer=sealer))
    assert load_signing_key(state, sealer).address == address
    assert (ratls_dir(state) / "ratls.pem").read_bytes() == pem
    # The key is on disk only sealed, and never in a log.
    raw = sealer.unseal((signing_dir(state) / KEY_FILE).read_bytes(), SEALING_LABEL)
    for f in [*signing_dir(state).iterdir(), *ratls_dir(state).iterdir()]:
        data = f.read_bytes()
        assert raw not in data and raw.hex().encode() not in data, f
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert raw.hex() not in logs and "0x" + address.hex() in logs


def test_receipts_off_means_no_claim_and_turning_on_reissues(tmp_path: Path) -> None:
    from certmgr.receipts.signing import signing_dir

    state = tmp_path / "state"
    sealer = InsecureDevSealer()
    prepare_certificates(
        _receipts_cfg(state, False),
        build_runtime(_receipts_cfg(state, False), prepare=True, sealer=sealer),
    )
    pem = (ratls_dir(state) / "ratls.pem").read_bytes()
    assert "signing-address" not in parse_certificate(pem).claims
    assert not signing_dir(state).exists()  # no key made while receipts are off
    prepare_certificates(
        _receipts_cfg(state, True),
        build_runtime(_receipts_cfg(state, True), prepare=True, sealer=sealer),
    )
    pem2 = (ratls_dir(state) / "ratls.pem").read_bytes()
    assert pem2 != pem and "signing-address" in parse_certificate(pem2).claims


def test_no_provider_no_signing_key(tmp_path: Path) -> None:
    from certmgr.receipts.signing import signing_dir

    state = tmp_path / "state"
    cfg = _receipts_cfg(state, True)
    cfg = cfg.replace(attestation=cfg.attestation.__class__(provider="none"))
    prepare_certificates(cfg, build_runtime(cfg, prepare=True, sealer=InsecureDevSealer()))
    assert not signing_dir(state).exists()


def test_unsealable_signing_key_stops_start_up(tmp_path: Path) -> None:
    from certmgr.receipts.signing import KEY_FILE, signing_dir

    state = tmp_path / "state"
    sealer = InsecureDevSealer()
    cfg = _receipts_cfg(state, True)
    prepare_certificates(cfg, build_runtime(cfg, prepare=True, sealer=sealer))
    key_file = signing_dir(state) / KEY_FILE
    blob = bytearray(key_file.read_bytes())
    blob[-1] ^= 1
    key_file.write_bytes(bytes(blob))
    with pytest.raises(ConfigError) as ei:
        prepare_certificates(cfg, build_runtime(cfg, prepare=True, sealer=sealer))
    assert ei.value.field == "receipts.enabled"
    assert str(key_file) in str(ei.value) and "failed authentication" in str(ei.value)
    assert key_file.read_bytes() == bytes(blob)  # kept for the operator, not replaced


async def test_evidence_names_the_signing_address(tmp_path: Path) -> None:
    from certmgr.receipts.signing import load_signing_key

    state = tmp_path / "state"
    cfg, store = await asyncio.to_thread(_prepare, state)
    sealer = InsecureDevSealer()
    address = (await asyncio.to_thread(load_signing_key, state, sealer)).address
    w = Worker(cfg, store, reuse_port=False)
    w.attestation = make_endpoint(
        cfg, w.holder, await asyncio.to_thread(build_runtime, cfg, prepare=False, sealer=sealer)
    )
    await w.start()
    try:
        nonce = "0a" * 16
        status, body, der = await _get(
            w.ports[0], NAME, f"/.well-known/tee/attestation?nonce={nonce}"
        )
    finally:
        await w.drain(grace=1.0)
    assert status == 200
    opts = await asyncio.to_thread(_dev_opts, state)
    ev = verify_evidence(body, bytes.fromhex(nonce), parse_certificate(der).spki_sha256, None, opts)
    assert ev.trusted, ev.failures
    assert ev.signing_address == address
    assert json.loads(body)["claims_view"]["signing-address"] == "0x" + address.hex()


async def test_verify_cli_refuses_certificate_and_evidence_naming_different_signers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``teeproxy verify`` (the client) against a worker whose evidence names another
    address than its certificate: refused with its own reason."""
    from proxy.cli.main import main

    state = tmp_path / "state"
    cfg, store = await asyncio.to_thread(_prepare, state)
    w = Worker(cfg, store, reuse_port=False)
    w.attestation = make_endpoint(
        cfg,
        w.holder,
        await asyncio.to_thread(build_runtime, cfg, prepare=False, sealer=InsecureDevSealer()),
    )
    await w.start()
    dev_key = str(ratls_dir(state) / "dev-attestation-key.pub.pem")
    args = ["verify", f"https://127.0.0.1:{w.ports[0]}", "--sni", NAME]
    args += ["--trust-dev-key", dev_key, "--any-measurement", "--json"]
    try:
        good = await asyncio.to_thread(main, args)
        good_doc = json.loads(capsys.readouterr().out)
        w.attestation.signing_address = "0x" + "cd" * 20
        bad = await asyncio.to_thread(main, args)
        bad_doc = json.loads(capsys.readouterr().out)
    finally:
        await w.drain(grace=1.0)
    assert (good, bad) == (0, 1)
    assert good_doc["signing_address"] == good_doc["evidence"]["signing_address"]
    assert good_doc["signing_address"] is not None
    reasons = [f["reason"] for f in bad_doc["evidence"]["failures"]]
    assert reasons == ["signing-address-mismatch"]
    assert bad_doc["trusted"] is False
