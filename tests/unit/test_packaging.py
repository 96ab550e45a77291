"""The install surface: dependency bounds, lock files, Dockerfile, README commands, CI entry."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_dependency_has_lower_and_upper_bound() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    reqs = list(project["dependencies"]) + [
        r for extra in project["optional-dependencies"].values() for r in extra
    ]
    for spec in reqs:
        req = Requirement(spec)
        ops = {s.operator for s in req.specifier}
        assert ops & {">=", ">", "=="}, f"{req.name} has no lower bound"
        assert ops & {"<", "<=", "=="}, f"{req.name} has no upper bound"


def test_lock_files_pin_every_runtime_dependency_with_hashes() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    for lock_name in ("requirements.lock", "requirements-test.lock"):
        lock = (ROOT / lock_name).read_text()
        pinned = {
            m.group(1).lower().replace("_", "-")
            for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", lock, re.M)
        }
        for spec in project["dependencies"]:
            assert Requirement(spec).name.lower() in pinned, f"{spec} missing in {lock_name}"
        blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", lock.split("\n\n", 1)[-1])
        for block in blocks:
            if "==" in block:
                assert "--hash=sha256:" in block, f"unhashed pin in {lock_name}: {block[:40]}"


def test_dockerfile_is_pinned_non_root_and_uses_the_tested_install_script() -> None:
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms, "no FROM line"
    for image in froms:
        assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"base not pinned by digest: {image}"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "image runs as root"
    assert "scripts/install.sh" in text, "Dockerfile must install with the script CI tests"
    assert "requirements.lock" in text


def test_readme_quickstart_has_the_two_commands_and_ci_calls_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands = [ln.split("#", 1)[0].strip() for ln in block.strip().splitlines()]
    assert commands == ["scripts/demo.sh", "scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
    for script in ("scripts/demo.sh", "scripts/test.sh", "scripts/install.sh", ".ci/run"):
        assert (ROOT / script).stat().st_mode & 0o111, f"{script} is not executable"


def test_default_config_is_shipped_as_package_data() -> None:
    project = _pyproject()["tool"]
    assert isinstance(project, dict)
    assert "default.toml" in project["setuptools"]["package-data"]["proxy"]


def test_every_subpackage_is_included_in_the_distribution() -> None:
    """A subpackage left out of the wheel imports fine from a checkout but not installed."""
    import fnmatch

    tool = _pyproject()["tool"]
    assert isinstance(tool, dict)
    include = tool["setuptools"]["packages"]["find"]["include"]
    for top in ("proxy", "certmgr"):
        for init in (ROOT / top).rglob("__init__.py"):
            name = ".".join(init.parent.relative_to(ROOT).parts)
            assert any(fnmatch.fnmatch(name, pat) for pat in include), f"{name} not packaged"
