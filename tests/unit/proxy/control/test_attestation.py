"""proxy.control.attestation: the RA-TLS certificate life cycle the supervisor runs:
renewal at two thirds of its life and on a changed name, the key stored sealed, failing
closed without a provider, the receipt signing address bound in the certificate, and the
endorsements it carries (Intel collateral from the configured source, renewed at its
nextUpdate; an SEV-SNP guest's certificate table, over a fake configfs-tsm tree)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
from pathlib import Path

import pytest

from certmgr.attest import ratls_store
from certmgr.attest.cmw import CMW_OID
from certmgr.attest.cmw import decode_extension as decode_cmw
from certmgr.attest.endorsements import (
    ENDORSEMENTS_OID,
    IntelCollateral,
    decode_endorsements,
)
from certmgr.attest.providers.nvml import NvmlGpuSource
from certmgr.attest.ratls import parse_certificate
from certmgr.attest.ratls_store import ratls_dir, ratls_renewal_due
from certmgr.attest.snp_verify import SnpPolicy
from certmgr.attest.verify import Reason, VerifyOptions, verify_certificate
from certmgr.keys import InsecureDevSealer
from proxy.config import Config, ConfigError
from proxy.control.attestation import check_gpus, prepare_attestation
from proxy.control.certificates import next_renewal, prepare_certificates
from proxy.dataplane.certstore import build_store
from proxy.runtime import Runtime, build_runtime
from tests.helpers.attest import T_TDX, at, collateral_text, vector
from tests.helpers.nvidia import FakeGpu, FakeNvml, real_h100_gpu
from tests.helpers.pccs import FakePccs, serve_pccs
from tests.helpers.simulated_tee import dev_verify_options, prepare_simulated, simulated_config
from tests.helpers.snp import dstack_cert_table, dstack_report
from tests.helpers.tsm import FakeTsm


def test_renewal_at_two_thirds_and_on_change(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg, _ = prepare_simulated(state, "cert_lifetime = 3600.0\n")
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
    renamed = simulated_config(state, 'cert_lifetime = 3600.0\nserver_name = "other.test"\n')
    prepare_certificates(renamed, build_runtime(renamed, prepare=True, sealer=sealer))
    assert (
        parse_certificate((ratls_dir(state) / "ratls.pem").read_bytes()).claims["hostname"]
        == "other.test"
    )
    store = build_store(renamed, sealer)
    assert store.select("other.test") is not None
    assert store.select("other.test").source == "ratls"  # type: ignore[union-attr]
    assert store.default is not None and store.default.source != "ratls"


def test_key_stored_sealed_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    prepare_simulated(state)
    for f in ratls_dir(state).iterdir():
        assert b"PRIVATE KEY" not in f.read_bytes(), f
    assert (ratls_dir(state) / "ratls.key.sealed").stat().st_mode & 0o077 == 0


def test_unavailable_provider_fails_closed(tmp_path: Path) -> None:
    cfg = simulated_config(tmp_path / "state").replace()
    bad = cfg.replace(
        attestation=cfg.attestation.__class__(
            provider="gramine", gramine_dir=str(tmp_path / "none")
        )
    )
    with pytest.raises(ConfigError) as ei:
        prepare_certificates(bad, build_runtime(bad, prepare=True, sealer=InsecureDevSealer()))
    assert ei.value.field == "attestation.provider"


# -- the receipt signing key in the attestation ----------------------------------------------


def _receipts_cfg(state: Path, enabled: bool) -> Config:
    cfg = simulated_config(state)
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
    v = verify_certificate(pem, None, dev_verify_options(state))
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


# -- endorsements: the collateral travels in the certificate ---------------------------------


@pytest.fixture
def fresh_log_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the once-per-process log lines, so that a test sees its own."""
    monkeypatch.setattr(ratls_store, "_logged", set())


def _tsm_config(
    tmp_path: Path, backend: str, quote: bytes, aux: bytes = b"", extra: str = ""
) -> tuple[Config, FakeTsm]:
    """[attestation] provider configfs-tsm over a fake tree whose entry for this process
    answers with ``quote`` (a real one: it ignores the report data) and ``aux``."""
    tsm = FakeTsm(tmp_path / "tsm", backend, lambda rd: (quote, aux))
    tsm.add_pid(os.getpid())
    cfg = simulated_config(
        tmp_path / "state",
        f'provider = "configfs-tsm"\nconfigfs_tsm_dir = "{tsm.root}"\n{extra}',
    )
    return cfg, tsm


def _prepare(cfg: Config, now: dt.datetime | None = None) -> bytes:
    prepare_certificates(cfg, build_runtime(cfg, prepare=True, sealer=InsecureDevSealer()), now)
    return (ratls_dir(cfg.state_dir) / "ratls.pem").read_bytes()


def _endorsements(pem: bytes, oid: str = ENDORSEMENTS_OID) -> bytes | None:
    found = parse_certificate(pem).extensions.get(oid)
    assert found is None or found[0] is False  # never critical
    return found[1] if found is not None else None


def _cmw_table(pem: bytes) -> bytes | None:
    """The certificate table in the certificate's CMW (RFC 9999) TSM report, if any."""
    value = _endorsements(pem, CMW_OID)
    if value is None:
        return None
    tsm = decode_cmw(value)
    assert tsm.provider == "sev_guest" and tsm.outblob == parse_certificate(pem).quote
    return tsm.auxblob or None


def test_intel_collateral_is_embedded_and_renews_at_its_next_update(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The real TDX quote (a TDX guest whose quote cannot be made over our claims: binding
    fails, honestly) with the real collateral from ``collateral_file``, at its pinned time."""
    coll_file = tmp_path / "collateral.json"
    coll_file.write_text(collateral_text("tdx_quote"))
    cfg, tsm = _tsm_config(
        tmp_path, "tdx_guest", vector("tdx_quote"), extra=f'collateral_file = "{coll_file}"'
    )
    try:
        pem = _prepare(cfg, at(T_TDX))
        value = _endorsements(pem)
        assert value is not None
        assert decode_endorsements(value).intel == IntelCollateral.from_json(
            collateral_text("tdx_quote")
        )
        v = verify_certificate(pem, None, VerifyOptions(any_measurement=True), now=T_TDX)
        assert v.status == "UpToDate" and v.to_json()["collateral_source"] == "certificate"
        assert set(v.reasons) == {Reason.REPORT_DATA, Reason.REPORT_DATA_PADDING}
        # Issued an hour before the collateral's nextUpdate: due then, not at 2/3 of 24 h.
        next_update = IntelCollateral.from_json(collateral_text("tdx_quote")).next_update()
        pem = _prepare(cfg, next_update - dt.timedelta(hours=1))
        assert ratls_renewal_due(cfg.state_dir) == next_update
        assert next_renewal(cfg) == next_update
        assert _prepare(cfg, next_update - dt.timedelta(seconds=1)) == pem  # not due yet
        with caplog.at_level(logging.WARNING, logger="teeproxy.attest"):
            renewed = _prepare(cfg, next_update + dt.timedelta(seconds=1))
        # Renewed; the file still holds the same (now expired) collateral: not embedded.
        assert renewed != pem and _endorsements(renewed) is None
        assert "expired at 2025-07-19T10:00:35+00:00: not embedded" in caplog.text
        due = ratls_renewal_due(cfg.state_dir)
        assert due is not None and due > next_update + dt.timedelta(hours=10)
    finally:
        tsm.close()


def test_without_collateral_no_endorsements_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fresh_log_once: None
) -> None:
    cfg, tsm = _tsm_config(tmp_path, "tdx_guest", vector("tdx_quote"))
    try:
        with caplog.at_level(logging.INFO, logger="teeproxy.attest"):
            pem = _prepare(cfg, at(T_TDX))
            _prepare(cfg, at(T_TDX) + dt.timedelta(hours=17))  # renewed: a second certificate
        assert (ratls_dir(cfg.state_dir) / "ratls.pem").read_bytes() != pem
        assert _endorsements(pem) is None
        assert caplog.text.count("no collateral source configured") == 1
        v = verify_certificate(pem, None, VerifyOptions(any_measurement=True), now=T_TDX)
        assert Reason.COLLATERAL_MISSING in v.reasons
        assert v.to_json()["collateral_source"] is None
        # Configuring a source replaces the certificate at the next preparation.
        coll_file = tmp_path / "collateral.json"
        coll_file.write_text(collateral_text("tdx_quote"))
        with_file = cfg.replace(
            attestation=dataclasses.replace(cfg.attestation, collateral_file=str(coll_file))
        )
        assert _endorsements(_prepare(with_file, at(T_TDX) + dt.timedelta(hours=18)))
    finally:
        tsm.close()


def test_unavailable_collateral_still_issues_the_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "absent.json"
    cfg, tsm = _tsm_config(
        tmp_path, "tdx_guest", vector("tdx_quote"), extra=f'collateral_file = "{missing}"'
    )
    try:
        with caplog.at_level(logging.WARNING, logger="teeproxy.attest"):
            pem = _prepare(cfg, at(T_TDX))
    finally:
        tsm.close()
    assert _endorsements(pem) is None
    assert (
        "no collateral for this quote, no endorsements" in caplog.text and "absent" in caplog.text
    )


def test_snp_certificate_carries_the_tees_certificate_table(tmp_path: Path) -> None:
    """An SEV-SNP guest (fake configfs-tsm ``sev_guest`` answering the real dstack report
    and its page-padded certificate table): the certificate carries the report under tag
    0x1a7504 in 2.23.133.5.4.9 and, with the table compacted, in the RFC 9999 CMW
    extension's TSM report, no 2.23.133.5.4.2; it verifies offline with the table. The
    report cannot be re-signed over our claims, so the binding fails, and only the binding."""
    table = dstack_cert_table(pad_to=16384)
    cfg, tsm = _tsm_config(tmp_path, "sev_guest", dstack_report(), table)
    try:
        pem = _prepare(cfg)
    finally:
        tsm.close()
    assert _endorsements(pem) is None
    assert _cmw_table(pem) == dstack_cert_table()
    assert parse_certificate(pem).quote == dstack_report()
    opts = VerifyOptions(any_measurement=True, snp=SnpPolicy(allow_smt=True))
    v = verify_certificate(pem, None, opts)
    assert v.status == "UpToDate" and v.tee == "sev-snp"
    assert v.to_json()["collateral_source"] == "certificate"
    assert v.reasons == (Reason.REPORT_DATA,)


def test_snp_without_certificate_table(tmp_path: Path) -> None:
    cfg, tsm = _tsm_config(tmp_path, "sev_guest", dstack_report(), b"")
    try:
        pem = _prepare(cfg)
    finally:
        tsm.close()
    assert _endorsements(pem) is None and _cmw_table(pem) is None
    assert _endorsements(pem, CMW_OID) is not None  # the report is in the CMW all the same
    v = verify_certificate(pem, None, VerifyOptions(any_measurement=True))
    assert Reason.UNVERIFIED_TEE in v.reasons


def test_collateral_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        simulated_config(tmp_path, 'collateral_file = "a"\ncollateral_pccs_url = "https://p"')
    assert ei.value.field == "attestation.collateral_file"
    with pytest.raises(ConfigError) as ei:
        simulated_config(tmp_path, 'collateral_pccs_url = "ftp://p"')
    assert ei.value.field == "attestation.collateral_pccs_url"


def test_snp_table_kept_out_of_the_certificate_when_configured(tmp_path: Path) -> None:
    """``snp_endorsements = false``: the CMW carries the report without the table; turning
    it on again replaces the certificate."""
    cfg, tsm = _tsm_config(
        tmp_path, "sev_guest", dstack_report(), dstack_cert_table(), "snp_endorsements = false"
    )
    try:
        pem = _prepare(cfg)
        assert _cmw_table(pem) is None and parse_certificate(pem).quote == dstack_report()
        assert _prepare(cfg) == pem  # stable while the setting holds
        on = cfg.replace(attestation=dataclasses.replace(cfg.attestation, snp_endorsements=True))
        assert _cmw_table(_prepare(on)) == dstack_cert_table()
    finally:
        tsm.close()


async def test_collateral_from_a_pccs_is_fetched_once_and_embedded(tmp_path: Path) -> None:
    """``collateral_pccs_url`` against a loopback PCCS (dcap-qvl's own fetcher, the real
    collateral): embedded; cached in STATE/attestation/collateral and not fetched again
    while it is valid."""
    text = await asyncio.to_thread(collateral_text, "tdx_quote")
    quote = await asyncio.to_thread(vector, "tdx_quote")
    async with serve_pccs(FakePccs(text)) as pccs:
        cfg, tsm = await asyncio.to_thread(
            _tsm_config,
            tmp_path,
            "tdx_guest",
            quote,
            b"",
            f'collateral_pccs_url = "{pccs.base_url}"',
        )
        try:
            pem = await asyncio.to_thread(_prepare, cfg, at(T_TDX))
            fetched = len(pccs.requests)
            assert fetched == 4 and any(
                "/tdx/certification/v4/tcb?fmspc=" in r for r in pccs.requests
            )
            renewed = await asyncio.to_thread(_prepare, cfg, at(T_TDX) + dt.timedelta(hours=17))
            assert renewed != pem and len(pccs.requests) == fetched  # from the cache
        finally:
            await asyncio.to_thread(tsm.close)
    for cert in (pem, renewed):
        value = _endorsements(cert)
        assert value is not None
        assert decode_endorsements(value).intel == IntelCollateral.from_json(text)
    cached = await asyncio.to_thread(
        lambda: list((ratls_dir(cfg.state_dir) / "collateral").iterdir())
    )
    assert len(cached) == 1 and cached[0].suffix == ".json"


# -- [attestation] gpu: the supervisor's GPU check ----------------------------------------


def _gpu_runtime(tmp_path: Path, fake: FakeNvml | None, mode: str) -> tuple[Config, Runtime]:
    """The runtime with ``fake`` as its NVML (None: this machine's, which has none)."""
    cfg = simulated_config(tmp_path / "state", f'gpu = "{mode}"\n')
    runtime = build_runtime(cfg, prepare=True, sealer=InsecureDevSealer())
    return cfg, dataclasses.replace(runtime, gpus=NvmlGpuSource(fake) if fake else None)


@pytest.mark.parametrize(
    ("fake", "message"),
    [
        (None, "NVML finds no GPU"),
        (FakeNvml([]), "no GPU"),
        ("devtools", "mode 'devtools'"),
        ("off", "mode 'off'"),
        ("ampere", "not all give SPDM evidence"),
        ("broken", "confidential-computing state"),
    ],
)
def test_enforce_refuses_to_start_without_attestable_gpus(
    tmp_path: Path, fake: object, message: str
) -> None:
    fakes = {
        "devtools": FakeNvml([real_h100_gpu()], devtools=1),
        "off": FakeNvml([real_h100_gpu()], cc=0),
        "ampere": FakeNvml([FakeGpu(lambda n: b"", b"", arch_code=7)]),
        "broken": FakeNvml([real_h100_gpu()], fail="state"),
    }
    nvml = fakes.get(fake, fake) if isinstance(fake, str) else fake
    cfg, runtime = _gpu_runtime(tmp_path, nvml, "enforce")  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as ei:
        prepare_attestation(cfg, runtime)
    assert ei.value.field == "attestation.gpu" and message in str(ei.value)


def test_enforce_starts_with_gpus_in_cc_mode_and_monitor_only_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, runtime = _gpu_runtime(tmp_path / "a", FakeNvml([real_h100_gpu()]), "enforce")
    check_gpus(cfg, runtime)
    cfg, runtime = _gpu_runtime(tmp_path / "b", FakeNvml([real_h100_gpu()], devtools=1), "monitor")
    with caplog.at_level(logging.WARNING, logger="teeproxy.attest"):
        check_gpus(cfg, runtime)
    assert "GPU attestation (monitor): GPUs in mode 'devtools'" in caplog.text
