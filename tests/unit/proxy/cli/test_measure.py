"""proxy.cli.measure: ``teeproxy measure predict`` and ``measure quote`` (and ``measure FILE``).

The dstack prediction is checked against the real deployment of tests/data/dstack-mpc:
from its docker-compose text and options the command writes the very app-compose.json the
CVM measured, and predicts its RTMR3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from certmgr.attest.measurement import measurement_id
from certmgr.attest.providers.base import self_measurement
from certmgr.attest.providers.simulated import SimulatedProvider
from certmgr.keys import generate_p256
from proxy.cli.main import main
from tests.helpers.release import compose_for, write_layout

DATA = Path(__file__).resolve().parents[3] / "data"
MPC = json.loads((DATA / "dstack-mpc" / "tcb_info.imr3.json").read_text())


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    try:
        return rc, json.loads(out), err
    except ValueError:
        return rc, out, err


def _image_and_compose(tmp_path: Path) -> tuple[Path, str, Path]:
    """An image layout and a docker-compose.yml pinning it by digest."""
    layout = tmp_path / "image"
    digest = write_layout(layout, b"build one")
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(compose_for(digest))
    return layout, digest, compose


def test_predict_dstack_reproduces_a_real_deployment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = json.loads(MPC["app_compose"])
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(app["docker_compose_file"])
    digest = "sha256:1f54b55bad22c45067228a9262bc6377e393ca1a07edb64e691e80704f49b74e"
    os_file = tmp_path / "os.json"
    os_file.write_text(json.dumps({k: MPC[k] for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2")}))
    events = {e["event"]: bytes.fromhex(e["event_payload"]) for e in MPC["event_log"]}
    kp = json.loads(events["key-provider"])
    written = tmp_path / "app-compose.json"
    argv = ["measure", "predict", "dstack", "--compose", str(compose), "--image-digest", digest]
    argv += ["--name", app["name"], "--local-key-provider", "--public-logs", "--public-sysinfo"]
    argv += ["--no-instance-id", "--os-measurement", str(os_file), "--json"]
    argv += ["--key-provider", f"local-sgx:{kp['id']}", "--write-app-compose", str(written)]
    last = MPC["event_log"][-1]
    argv += ["--app-event", f"{last['event']}={last['event_payload']}"]
    rc, doc, err = _run(capsys, *argv)
    assert rc == 0, err
    assert written.read_bytes() == MPC["app_compose"].encode()
    assert doc["compose_hash"] == MPC["compose_hash"]
    [p] = doc["predictions"]
    assert p["target"] == "dstack-tdx"
    assert p["registers"]["rt_mr3"] == MPC["rtmr3"]
    assert p["registers"]["mr_td"] == MPC["mrtd"]
    assert p["registers"]["mr_config_id"] == "01" + MPC["compose_hash"] + "00" * 15
    # Text output names the id and the events.
    rc, text, _ = _run(capsys, *[a for a in argv if a != "--json"])
    assert rc == 0 and p["measurement_id"] in text and "system-ready" in text


def test_predict_refuses_unpredictable_or_unpinned_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout, digest, compose = _image_and_compose(tmp_path)
    base = ["measure", "predict", "dstack", "--compose", str(compose), "--image", str(layout)]
    base += ["--key-provider", "none"] + [
        f"--{r}={'00' * 48}" for r in ("mrtd", "rtmr0", "rtmr1", "rtmr2")
    ]
    rc, _, err = _run(capsys, *base)
    assert rc == 2 and "--instance-id HEX is required" in err
    rc, doc, err = _run(capsys, *base, "--instance-id", "11" * 20, "--json")
    assert rc == 0, err
    assert doc["image_digest"] == digest
    compose.write_text(compose_for(digest).replace(f"@{digest}", ":latest"))
    rc, _, err = _run(capsys, *base, "--no-instance-id")
    assert rc == 2 and "not pinned by digest" in err


def test_predict_simulated_is_what_the_simulated_provider_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout, _, compose = _image_and_compose(tmp_path)
    argv = ["measure", "predict", "simulated", "--compose", str(compose), "--image", str(layout)]
    rc, doc, err = _run(capsys, *argv, "--json")
    assert rc == 0, err
    [p] = doc["predictions"]
    config_id = bytes.fromhex(p["inputs"]["simulated_mr_config_id"])
    provider = SimulatedProvider(generate_p256(), config_id)
    assert "0x" + measurement_id(self_measurement(provider)).hex() == p["measurement_id"]
    # Another build (another layer, so another digest) predicts another id.
    other = tmp_path / "image2"
    digest2 = write_layout(other, b"build two")
    compose.write_text(compose_for(digest2))
    rc, doc2, err = _run(capsys, *argv[:-1], str(other), "--json")
    assert rc == 0, err
    assert doc2["predictions"][0]["measurement_id"] != p["measurement_id"]


def test_predict_snp_errors_are_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ovmf = tmp_path / "OVMF.fd"
    ovmf.write_bytes(b"\0" * 8192)  # no OVMF footer table: sev-snp-measure refuses it
    argv = ["measure", "predict", "snp", "--ovmf", str(ovmf), "--vcpus", "2"]
    rc, _, err = _run(capsys, *argv, "--vcpu-type", "EPYC-v4")
    assert rc == 2 and "sev-snp-measure" in err
    rc, _, err = _run(capsys, *argv, "--vcpu-type", "Pentium")
    assert rc == 2 and "unknown vCPU type" in err


def test_measure_file_is_still_measure_quote(capsys: pytest.CaptureFixture[str]) -> None:
    quote = DATA / "dcap-qvl" / "tdx_quote"
    rc, out, _ = _run(capsys, "measure", str(quote))
    rc2, out2, _ = _run(capsys, "measure", "quote", str(quote))
    assert rc == rc2 == 0 and out == out2 and out.startswith("0x")
