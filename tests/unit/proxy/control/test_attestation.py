"""proxy.control.attestation: the RA-TLS certificate life cycle the supervisor runs:
renewal at two thirds of its life and on a changed name, the key stored sealed, failing
closed without a provider, and the receipt signing address bound in the certificate."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path

import pytest

from certmgr.attest.providers.nvml import NvmlGpuSource
from certmgr.attest.ratls import parse_certificate
from certmgr.attest.ratls_store import ratls_dir, ratls_renewal_due
from certmgr.attest.verify import verify_certificate
from certmgr.keys import InsecureDevSealer
from proxy.config import Config, ConfigError
from proxy.control.attestation import check_gpus, prepare_attestation
from proxy.control.certificates import next_renewal, prepare_certificates
from proxy.dataplane.certstore import build_store
from proxy.runtime import Runtime, build_runtime
from tests.helpers.nvidia import FakeGpu, FakeNvml, real_h100_gpu
from tests.helpers.simulated_tee import dev_verify_options, prepare_simulated, simulated_config


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
