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


def test_banner_commands_are_runnable_when_teeproxy_is_not_on_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil
    import sys

    from proxy.cli.demo import runnable, teeproxy_command

    script = Path(sys.executable).parent / "teeproxy"
    monkeypatch.setattr(shutil, "which", lambda _name: None)  # not on PATH
    command = teeproxy_command()
    assert command in (str(script), f"{sys.executable} -m proxy.cli")
    text = (
        "Verify:\n  teeproxy verify https://x --json\nteeproxy demo is running\n"
        "  PW=x teeproxy policy allow 0x01\n  the id `teeproxy verify` reports"
    )
    out = runnable(text, command).splitlines()
    assert out[1] == f"  {command} verify https://x --json"
    assert out[2] == "teeproxy demo is running"  # prose is left alone
    assert out[3] == f"  PW=x {command} policy allow 0x01"
    assert out[4] == "  the id `teeproxy verify` reports"
    monkeypatch.setattr(shutil, "which", lambda _name: str(script))
    if script.exists():
        assert teeproxy_command() == "teeproxy"
        assert runnable(text, "teeproxy") == text
