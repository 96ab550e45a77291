"""proxy.cli.manifest: ``teeproxy release keygen|manifest|show`` and ``verify-build``, and
``teeproxy policy allow --from-manifest`` refusing a manifest that does not verify.

The image is an OCI layout written by tests/helpers/release.py (a stand-in for the
reproducible build: a different payload is a different digest); ``verify-build --image``
compares against a given layout instead of rebuilding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from certmgr.release.manifest import decrypt_release_key, load_public_key, verify_manifest
from certmgr.release.predict import predict_snp
from proxy.cli import attest as cli_attest
from proxy.cli.main import main
from tests.helpers.release import compose_for, write_layout

PASSWORD = "release-test-password"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def release(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    monkeypatch.setenv("TEEPROXY_RELEASE_PASSWORD", PASSWORD)
    key, pub = tmp_path / "release.key", tmp_path / "release.pub"
    rc, out, err = _run(capsys, "release", "keygen", str(key), "--public-out", str(pub))
    assert rc == 0, err
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes() and PASSWORD not in out
    layout = tmp_path / "image"
    digest = write_layout(layout, b"build one")
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(compose_for(digest))
    rc, out, err = _run(
        capsys,
        *("measure", "predict", "simulated", "--compose", str(compose), "--image", str(layout)),
        "--json",
    )
    assert rc == 0, err
    pred = tmp_path / "prediction.json"
    pred.write_text(out)
    lock = tmp_path / "requirements.lock"
    lock.write_text("aiohttp==3.14.5 --hash=sha256:00\n")
    argv = ["release", "manifest", "--image", str(layout), "--prediction", str(pred)]
    argv += ["--lock", str(lock), "--commit", COMMIT, "--source-date-epoch", "1700000000"]
    rc, out, err = _run(capsys, *argv, "--sign-key", str(key))
    assert rc == 0, err
    return {
        "key": key,
        "pub": pub,
        "layout": layout,
        "digest": digest,
        "manifest": layout / "teeproxy-manifest.dsse.json",
        "prediction": json.loads(pred.read_text())["predictions"][0],
        "argv": argv,
        "compose": compose,
    }


def test_manifest_is_signed_and_names_the_build(release: dict[str, Any]) -> None:
    pub = load_public_key(release["pub"].read_bytes())
    m = verify_manifest(release["manifest"].read_bytes(), [pub])
    assert m.image_digest == release["digest"]
    assert (m.commit, m.source_date_epoch) == (COMMIT, 1700000000)
    assert m.measurement_ids() == {"simulated-tdx": release["prediction"]["measurement_id"]}
    key = decrypt_release_key(release["key"].read_bytes(), PASSWORD)
    assert key.public_key() == pub


def test_show_and_verify_build(
    release: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m, pub = str(release["manifest"]), str(release["pub"])
    rc, out, err = _run(capsys, "release", "show", m, "--release-key", pub)
    assert rc == 0 and release["digest"] in out and COMMIT in out, err
    argv = ["verify-build", m, "--source", str(tmp_path), "--release-key", pub]
    rc, out, err = _run(capsys, *argv, "--image", str(release["layout"]))
    assert rc == 0, out + err
    assert "BUILD VERIFIED" in out and "OK           simulated-tdx" in out
    # A rebuild that differs (another source, another lock): another digest, refused.
    other = tmp_path / "other"
    write_layout(other, b"build two")
    rc, out, _ = _run(capsys, *argv, "--image", str(other), "--json")
    report = json.loads(out)
    assert rc == 1 and not report["verified"]
    status = {c["check"]: c["status"] for c in report["checks"]}
    assert status == {"image digest": "MISMATCH", "simulated-tdx": "MISMATCH"}


def test_flipped_byte_refused_everywhere(
    release: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = bytearray(release["manifest"].read_bytes())
    env = json.loads(raw)
    i = raw.index(env["payload"][40:48].encode())
    raw[i] = ord("A") if raw[i] != ord("A") else ord("B")
    bad = tmp_path / "bad.dsse.json"
    bad.write_bytes(bytes(raw))
    pub = str(release["pub"])
    rc, _, err = _run(capsys, "release", "show", str(bad), "--release-key", pub)
    assert rc == 2 and "no signature verifies" in err
    argv = ["verify-build", str(bad), "--source", str(tmp_path), "--release-key", pub]
    rc, out, err = _run(capsys, *argv, "--image", str(release["layout"]))
    assert rc == 2 and "BUILD VERIFIED" not in out
    # policy allow: refused before the keystore is unlocked or anything is sent (no
    # password is set for the keystore, no node listens at the RPC URL).
    keystore = tmp_path / "operator.json"
    keystore.write_text("{}")
    policy = ["policy", "--rpc", "http://127.0.0.1:9", "--address", "0x" + "11" * 20]
    policy += ["--keystore", str(keystore), "allow", "--from-manifest", str(bad)]
    rc, out, err = _run(capsys, *policy, "--release-key", pub)
    assert rc == 1 and "manifest refused, nothing sent" in err and "sent" not in out
    rc, _, err = _run(capsys, *policy)
    assert rc == 1 and "--release-key PEM is required" in err


def test_a_prediction_for_another_image_is_not_signed(
    release: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    write_layout(other, b"build two")
    argv = list(release["argv"])
    argv[argv.index("--image") + 1] = str(other)
    rc, _, err = _run(capsys, *argv, "--sign-key", str(release["key"]))
    assert rc == 2 and "does not reference the image" in err
    assert not (other / "teeproxy-manifest.dsse.json").exists()


def test_keygen_refuses_short_password_and_overwrite(
    release: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, _, err = _run(
        capsys, "release", "keygen", str(release["key"]), "--public-out", str(release["pub"])
    )
    assert rc == 2 and "exists" in err
    monkeypatch.setenv("TEEPROXY_RELEASE_PASSWORD", "short")
    key = release["key"].with_name("k2")
    rc, _, err = _run(capsys, "release", "keygen", str(key), "--public-out", str(key) + ".pub")
    assert rc == 2 and "at least" in err and not key.exists()


def test_verify_names_the_build_of_a_known_measurement(
    release: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """``teeproxy verify --manifest``'s part: the build of an id a verified manifest predicts."""
    m = verify_manifest(
        release["manifest"].read_bytes(), [load_public_key(release["pub"].read_bytes())]
    )
    mid = bytes.fromhex(release["prediction"]["measurement_id"][2:])
    build = cli_attest._build_of([("M.json", m)], mid)
    assert build["known"] and build["commit"] == COMMIT
    assert build["image"] == f"teeproxy@{release['digest']}"
    cli_attest._print({"trusted": True, "build": build}, as_json=False)
    out = capsys.readouterr().out
    assert f"build:    teeproxy@{release['digest']} commit {COMMIT}" in out
    unknown = cli_attest._build_of([("M.json", m)], bytes(32))
    assert unknown == {"known": False, "manifests": ["M.json"]}
    cli_attest._print({"trusted": True, "build": unknown}, as_json=False)
    assert "not in any given manifest" in capsys.readouterr().out


def test_snp_target_is_not_verified_without_its_launch_files(
    release: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snp = predict_snp(b"\x07" * 48, inputs={"launch_digest": "07" * 48, "vcpus": 2})
    pred = tmp_path / "snp.json"
    pred.write_text(json.dumps({"predictions": [snp.to_json()]}))
    argv = [*release["argv"], "--prediction", str(pred), "--sign-key", str(release["key"])]
    out_manifest = tmp_path / "m.dsse.json"
    rc, _, err = _run(capsys, *argv, "--output", str(out_manifest))
    assert rc == 0, err
    verify = ["verify-build", str(out_manifest), "--source", str(tmp_path)]
    verify += ["--release-key", str(release["pub"]), "--image", str(release["layout"])]
    rc, out, _ = _run(capsys, *verify)
    assert rc == 1 and "NOT CHECKED  sev-snp" in out and "BUILD NOT VERIFIED" in out
    rc, out, _ = _run(capsys, *verify, "--skip-target", "sev-snp")
    assert rc == 0 and "SKIPPED      sev-snp" in out
