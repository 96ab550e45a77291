"""``teeproxy build-image`` refuses what it cannot build reproducibly, before building."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from proxy.cli.main import main

REPO = Path(__file__).resolve().parents[4]


def test_output_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build-image", "--source", str(REPO)]) == 2
    assert "--output is required" in capsys.readouterr().err


def test_outside_git_the_epoch_is_required(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    assert main(["build-image", "--source", str(src), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "source: " in err and "--source-date-epoch" in err
    assert not (tmp_path / "o").exists()


def test_negative_epoch_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["build-image", "--output", str(tmp_path), "--source-date-epoch", "-1"])
    assert e.value.code == 2
