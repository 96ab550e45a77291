"""The layout of tests/ itself: unit tests mirror the source tree, helpers are plain modules.

- ``tests/unit/<package path>/test_<module>.py`` tests ``<package path>/<module>.py`` (or the
  package ``<package path>/<module>/``), except for the few repository-wide tests below;
- no module under tests/ imports a test module (``test_*``) or a ``conftest``: shared code
  lives in tests/helpers/, fixtures live in conftest.py files;
- tests/helpers/ defines no fixtures, and every directory holding tests is a package (test
  basenames repeat across directories).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
UNIT = TESTS / "unit"

# Unit tests of the repository as a whole, with no module of their own.
NOT_A_MODULE = {
    UNIT / "test_packaging.py": "the install surface: pyproject, lock files, Dockerfile, README",
    UNIT / "test_layering.py": "the import graph of proxy/ and certmgr/ and its contracts",
    UNIT / "test_test_layout.py": "this file: the layout of tests/",
}


def _imported_modules(tree: ast.Module, package: str) -> Iterator[tuple[int, str]]:
    """Every module an import statement names (function-local imports included).

    ``from a.b import c`` yields ``a.b`` and ``a.b.c`` (``c`` may be a submodule); relative
    imports are resolved against ``package``.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def forbidden_imports(source: str, package: str) -> list[str]:
    """``line: module`` for each import of one of our test modules or conftests in ``source``
    (third-party modules such as ``aiohttp.test_utils`` are not ours)."""
    found = []
    for line, module in _imported_modules(ast.parse(source), package):
        parts = module.split(".")
        if parts[0] == "tests" and (parts[-1].startswith("test_") or parts[-1] == "conftest"):
            found.append(f"{line}: {module}")
    return found


def _package(path: Path) -> str:
    return ".".join(path.relative_to(REPO).parent.parts)


def test_no_module_under_tests_imports_a_test_module_or_a_conftest() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for hit in forbidden_imports(path.read_text(encoding="utf-8"), _package(path)):
            offenders.append(f"{path.relative_to(REPO)}:{hit}")
    assert offenders == [], "import helpers from tests/helpers/ instead:\n" + "\n".join(offenders)


def test_the_import_check_finds_test_and_conftest_imports() -> None:
    source = (
        "import tests.conftest\n"
        "from tests.conftest import make_config\n"
        "from tests.integration import test_serve\n"
        "from tests.integration.test_serve import launch\n"
        "from . import conftest\n"
        "from .test_admin import x\n"
        "def f():\n"
        "    from tests.unit.proxy.test_tls import handshake\n"
        "from tests.helpers.serve import Launch\n"
        "from aiohttp.test_utils import TestClient\n"
        "import pytest\n"
    )
    hits = forbidden_imports(source, "tests.integration")
    assert hits == [
        "1: tests.conftest",
        "2: tests.conftest",
        "3: tests.integration.test_serve",
        "4: tests.integration.test_serve",
        "5: tests.integration.conftest",
        "6: tests.integration.test_admin",
        "8: tests.unit.proxy.test_tls",
    ]


def test_each_unit_test_module_has_its_source_module() -> None:
    missing = []
    for path in sorted(UNIT.rglob("test_*.py")):
        if path in NOT_A_MODULE:
            continue
        target = REPO / path.parent.relative_to(UNIT) / path.name.removeprefix("test_")
        package = target.with_suffix("") / "__init__.py"
        if not target.is_file() and not package.is_file():
            missing.append(f"{path.relative_to(REPO)}: no {target.relative_to(REPO)}")
    assert missing == [], "a unit test goes where the code it tests lives:\n" + "\n".join(missing)


def test_the_exceptions_exist() -> None:
    assert [p for p in NOT_A_MODULE if not p.is_file()] == []


def test_helpers_define_no_fixtures() -> None:
    offenders = []
    for path in sorted((TESTS / "helpers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for dec in node.decorator_list:
                    target = dec.func if isinstance(dec, ast.Call) else dec
                    if "fixture" in ast.unparse(target):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.name}")
    assert offenders == [], "fixtures belong in a conftest.py:\n" + "\n".join(offenders)


def test_every_test_directory_is_a_package() -> None:
    dirs = {p.parent for p in TESTS.rglob("*.py")} | {TESTS}
    assert sorted(str(d.relative_to(REPO)) for d in dirs if not (d / "__init__.py").is_file()) == []
