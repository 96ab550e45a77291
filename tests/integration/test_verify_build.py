"""``teeproxy verify-build``: a release manifest checked by rebuilding the image from source.

The release side is the run's shared real build of a git checkout of this tree
(``release_build``: ``build_image``, reproducible: mmdebstrap base, hash-pinned wheels; its
``build-image --json`` record), predicts the dstack and the
simulated measurement ids from a compose file pinning that image, and signs the manifest
with ``--build-json``. The auditor side runs ``verify-build``, which rebuilds the image from
the same checkout and re-derives every prediction: digest, lock, commit, SOURCE_DATE_EPOCH
and both ids must agree. One full image build here (the rebuild): about a minute on 2 cores;
needs what tests/integration/test_build_image.py needs (root, mmdebstrap, Debian and PyPI).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from certmgr.attest.intel import parse_quote
from proxy.cli.main import main
from tests.helpers.release import SDE, ReleaseBuild, compose_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_verify_build_rebuilds_and_rederives(
    release_build: ReleaseBuild,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, commit = release_build.source, release_build.commit
    layout = tmp_path / "release-image"  # a copy: the manifest is written next to the image
    shutil.copytree(release_build.build.output, layout)
    build = release_build.build.to_json()  # what `teeproxy build-image --json` prints
    build["output"] = str(layout)
    (tmp_path / "build.json").write_text(json.dumps(build, indent=2, sort_keys=True))
    assert build["commit"] == commit and build["source_date_epoch"] == SDE

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
