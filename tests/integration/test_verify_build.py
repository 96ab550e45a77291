"""``teeproxy verify-build``: a release manifest checked by rebuilding the image from source.

The release side builds the real image (``teeproxy build-image``, reproducible: mmdebstrap
base, hash-pinned wheels) from a git checkout of this tree, predicts the dstack and the
simulated measurement ids from a compose file pinning that image, and signs the manifest
with ``--build-json``. The auditor side runs ``verify-build``, which rebuilds the image from
the same checkout and re-derives every prediction: digest, lock, commit, SOURCE_DATE_EPOCH
and both ids must agree. Two full image builds: about 2.5 minutes on 2 cores; needs what
tests/integration/test_build_image.py needs (root, mmdebstrap, Debian and PyPI).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from certmgr.attest.intel import parse_quote
from proxy.cli.main import main
from tests.helpers.release import compose_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
SOURCE_PARTS = ("pyproject.toml", "README.md", "requirements.lock", "release", "proxy", "certmgr")
SDE = "1700000000"


def _checkout(dest: Path) -> str:
    """A git checkout holding the parts of this tree the image is built from; its commit."""
    dest.mkdir()
    for part in SOURCE_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_AUTHOR_DATE": f"@{SDE} +0000",
        "GIT_COMMITTER_DATE": f"@{SDE} +0000",
        "PATH": "/usr/bin:/bin",
        "HOME": str(dest),
    }
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "release"]):
        subprocess.run(["git", "-C", str(dest), *argv], check=True, env=env, timeout=60)
    out = subprocess.run(
        ["git", "-C", str(dest), "rev-parse", "HEAD"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_verify_build_rebuilds_and_rederives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src"
    commit = _checkout(source)
    layout = tmp_path / "release-image"
    rc, out, err = _cli(
        capsys, "build-image", "--source", str(source), "--output", str(layout), "--json"
    )
    assert rc == 0, err
    build = json.loads(out)
    (tmp_path / "build.json").write_text(out)
    assert build["commit"] == commit and build["source_date_epoch"] == int(SDE)

    compose = tmp_path / "docker-compose.yml"
    compose.write_text(compose_for(build["image_digest"]))
    # The dstack OS image's published values: here the real quote's MRTD and RTMR0-2.
    m = parse_quote(
        bytes.fromhex(json.loads((DATA / "dstack" / "tdx-lite-getquote.json").read_text())["quote"])
    ).measurement
    os_file = tmp_path / "os.json"
    os_file.write_text(
        json.dumps(
            {
                "mrtd": m.mr_td.hex(),
                "rtmr0": m.rt_mr0.hex(),
                "rtmr1": m.rt_mr1.hex(),
                "rtmr2": m.rt_mr2.hex(),
            }
        )
    )
    common = ["--compose", str(compose), "--image", str(layout), "--no-instance-id", "--json"]
    rc, out, err = _cli(
        capsys,
        *("measure", "predict", "dstack", *common),
        *("--os-measurement", str(os_file), "--key-provider", "none"),
    )
    assert rc == 0, err
    (tmp_path / "dstack.json").write_text(out)
    rc, out, err = _cli(capsys, "measure", "predict", "simulated", *common)
    assert rc == 0, err
    (tmp_path / "simulated.json").write_text(out)

    monkeypatch.setenv("TEEPROXY_RELEASE_PASSWORD", "release-password")
    key, pub = tmp_path / "release.key", tmp_path / "release.pub"
    assert _cli(capsys, "release", "keygen", str(key), "--public-out", str(pub))[0] == 0
    rc, _, err = _cli(
        capsys,
        *(
            "release",
            "manifest",
            "--image",
            str(layout),
            "--build-json",
            str(tmp_path / "build.json"),
        ),
        *(
            "--prediction",
            str(tmp_path / "dstack.json"),
            "--prediction",
            str(tmp_path / "simulated.json"),
        ),
        *("--sign-key", str(key)),
    )
    assert rc == 0, err
    manifest = layout / "teeproxy-manifest.dsse.json"

    # The auditor: signature, a rebuild from the checkout, every id re-derived.
    rc, out, err = _cli(
        capsys,
        "verify-build",
        str(manifest),
        "--source",
        str(source),
        "--release-key",
        str(pub),
        "--json",
    )
    report = json.loads(out)
    assert rc == 0, (report, err)
    assert report["verified"] and report["rebuilt"]["digest"] == build["image_digest"]
    status = {c["check"]: c["status"] for c in report["checks"]}
    assert status == {
        "image digest": "OK",
        "lock_sha256": "OK",
        "commit": "OK",
        "source_date_epoch": "OK",
        "dstack-tdx": "OK",
        "simulated-tdx": "OK",
    }
