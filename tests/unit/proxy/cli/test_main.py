"""proxy.cli.main: the command line in process: check-config, print-default-config,
--version, serve with a bad config."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import __version__
from proxy.cli.main import main
from proxy.config import default_toml


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[server]\nlisten = ["127.0.0.1:8443"]\n[backend]\nurl = "unix:/run/x.sock"\n')
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: ok")
    assert "1 listener(s)" in out
    assert "unix:/run/x.sock" in out
    assert err == ""


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[server]\nworkers = 999\n", "server.workers"),
        ('[admin]\nlisten = "0.0.0.0:9443"\n', "admin.listen"),
        ("[backend]\nnope = 1\n", "backend.nope"),
        ("[server\n", "<toml>"),
    ],
)
def test_check_config_invalid_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, field: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: invalid: {field}: ")


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.toml"
    assert main(["check-config", str(path)]) == 2
    _, err = capsys.readouterr()
    assert "invalid" in err and "cannot read" in err


def test_check_config_requires_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check-config"])
    assert info.value.code == 2
    assert "file" in capsys.readouterr().err


def test_print_default_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["print-default-config"]) == 0
    assert capsys.readouterr().out == default_toml()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"teeproxy {__version__}"


def test_serve_with_invalid_config_exits_2_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[tls]\nmin_version = '1.0'\n")
    assert main(["serve", "--config", str(path)]) == 2
    _, err = capsys.readouterr()
    assert "config error: tls.min_version:" in err
