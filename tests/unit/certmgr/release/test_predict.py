"""certmgr.release.predict: predicted measurement ids equal the ids computed from real quotes.

- dstack-tdx: the real TDX quote of tests/data/dstack (its README): its MRTD and RTMR0-2 as
  the OS image's values, RTMR3 and MRCONFIGID predicted from the compose hash and the
  deployment's inputs; the predicted id is ``measurement_id`` of the parsed quote.
- sev-snp: the real SEV-SNP report of tests/data/sev-snp (dstack's Milan fixture).
- simulated-tdx: a quote from teeproxy's simulated provider configured with the predicted
  MRCONFIGID.
- recompute: re-deriving from the recorded inputs, and what a changed input does.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.attest.intel import parse_quote
from certmgr.attest.measurement import measurement_id
from certmgr.attest.providers.base import self_measurement
from certmgr.attest.providers.simulated import SimulatedProvider
from certmgr.attest.sevsnp import parse_snp_report
from certmgr.errors import ReleaseError
from certmgr.release import dstack_compose as dc
from certmgr.release import predict as pr

DATA = Path(__file__).resolve().parents[3] / "data"
LITE = json.loads((DATA / "dstack" / "tdx-lite-getquote.json").read_text())
DIGEST = "sha256:" + "ab" * 32
COMPOSE = f"services:\n  proxy:\n    image: teeproxy@{DIGEST}\n"


def test_dstack_prediction_is_the_real_quotes_measurement_id() -> None:
    q = parse_quote(bytes.fromhex(LITE["quote"]))
    m = q.measurement
    log = json.loads(LITE["event_log"])
    events = {e["event"]: bytes.fromhex(e["event_payload"]) for e in log if e["imr"] == 3}
    os = pr.TdxOsMeasurement.from_json(
        {
            "mrtd": m.mr_td.hex(),
            "rtmr0": m.rt_mr0.hex(),
            "rtmr1": m.rt_mr1.hex(),
            "rtmr2": m.rt_mr2.hex(),
        }
    )
    rt = dc.DstackRuntime(
        key_provider=events["key-provider"],
        instance_id=events["instance-id"],
        os_image_hash=events["os-image-hash"],
    )
    p = pr.predict_dstack(os, events["compose-hash"], rt)
    assert p.measurement == m
    assert p.measurement_id == measurement_id(m)
    assert p.to_json()["measurement_id"] == "0x" + measurement_id(m).hex()
    # Another instance of the same app: another RTMR3, so another id (docs: why the
    # instance id is an input, and no_instance_id makes it predictable).
    other = pr.predict_dstack(
        os, events["compose-hash"], dataclasses.replace(rt, instance_id=bytes(20))
    )
    assert other.measurement_id != p.measurement_id


def test_snp_prediction_is_the_real_reports_measurement_id() -> None:
    report = parse_snp_report((DATA / "sev-snp" / "dstack_sev_snp_report_raw.bin").read_bytes())
    m = report.measurement
    p = pr.predict_snp(m.measurement, host_data=m.host_data)
    assert p.measurement_id == measurement_id(m)
    with pytest.raises(ReleaseError, match="48 bytes"):
        pr.predict_snp(b"short")


def test_simulated_prediction_is_what_the_simulated_provider_reports() -> None:
    compose = dc.compose_hash(dc.app_compose_json(COMPOSE, dc.AppComposeOptions(name="t")))
    p = pr.predict_simulated(compose)
    provider = SimulatedProvider(
        ec.generate_private_key(ec.SECP256R1()), dc.mr_config_id_v1(compose)
    )
    assert measurement_id(self_measurement(provider)) == p.measurement_id
    unconfigured = SimulatedProvider(ec.generate_private_key(ec.SECP256R1()))
    assert measurement_id(self_measurement(unconfigured)) != p.measurement_id


def _dstack_prediction(compose_text: str, digest: str) -> pr.Prediction:
    data = dc.app_compose_json(compose_text, dc.AppComposeOptions(name="t", no_instance_id=True))
    os = pr.TdxOsMeasurement(bytes(48), b"\x01" * 48, b"\x02" * 48, b"\x03" * 48)
    rt = dc.DstackRuntime(key_provider=dc.key_provider_payload("none"))
    inputs = {"app_compose": data.decode(), "image_digest": digest}
    return pr.predict_dstack(os, dc.compose_hash(data), rt, inputs=inputs)


def test_recompute_from_recorded_inputs() -> None:
    p = _dstack_prediction(COMPOSE, DIGEST)
    doc = p.to_json()
    again = pr.recompute("dstack-tdx", doc["inputs"], DIGEST)
    assert again.measurement_id == p.measurement_id
    sim = pr.predict_simulated(
        dc.compose_hash(doc["inputs"]["app_compose"].encode()), inputs=doc["inputs"]
    )
    assert (
        pr.recompute("simulated-tdx", sim.to_json()["inputs"], DIGEST).measurement_id
        == sim.measurement_id
    )
    # Another image digest (a changed source or lock): the compose no longer names it.
    with pytest.raises(ReleaseError, match="does not reference"):
        pr.recompute("dstack-tdx", doc["inputs"], "sha256:" + "cd" * 32)
    # A recorded compose hash that is not the text's is refused.
    tampered = {**doc["inputs"], "compose_hash": "00" * 32}
    with pytest.raises(ReleaseError, match="compose hash"):
        pr.recompute("dstack-tdx", tampered, DIGEST)
    with pytest.raises(ReleaseError, match="unknown target"):
        pr.recompute("sgx", {}, DIGEST)


def test_a_changed_image_digest_changes_the_predicted_ids() -> None:
    other = "sha256:" + "cd" * 32
    a = _dstack_prediction(COMPOSE, DIGEST)
    b = _dstack_prediction(COMPOSE.replace(DIGEST, other), other)
    assert a.measurement_id != b.measurement_id
    assert a.measurement.rt_mr3 != b.measurement.rt_mr3
    assert a.measurement.mr_config_id != b.measurement.mr_config_id


def test_os_measurement_input_is_strict() -> None:
    with pytest.raises(ReleaseError, match="missing"):
        pr.TdxOsMeasurement.from_json({"mrtd": "00" * 48})
    with pytest.raises(ReleaseError, match="48"):
        pr.TdxOsMeasurement.from_json({k: "00" for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2")})
