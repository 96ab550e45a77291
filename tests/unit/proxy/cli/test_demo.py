"""proxy.cli.demo: ``teeproxy demo`` builds its config from the arguments safely."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli.main import main


def test_demo_config_quotes_paths_and_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Paths with quotes or backslashes reach the config intact (no TOML syntax error):
    the demo then fails on the one invalid argument, naming it."""
    state = tmp_path / 'we"ird\\dir'
    assert main(["demo", "--state-dir", str(state), "--admin", "0.0.0.0:9443"]) == 2
    err = capsys.readouterr().err
    assert "admin.listen: must be loopback" in err
    assert "<toml>" not in err
    assert state.is_dir()
