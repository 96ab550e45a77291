#!/usr/bin/env bash
# Install teeproxy into a virtual environment from the hash-pinned lock file.
#
#   scripts/install.sh VENV_DIR           runtime only (requirements.lock)
#   scripts/install.sh VENV_DIR --test    runtime + test tools (requirements-test.lock)
#
# The Dockerfile runs exactly this script, and so do scripts/demo.sh and scripts/test.sh
# (hence CI): the image's install steps are tested on every CI run.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:?usage: install.sh VENV_DIR [--test]}"
lock="$here/requirements.lock"
[ "${2:-}" = "--test" ] && lock="$here/requirements-test.lock"

py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "install.sh: Python 3.11 or newer is required ($py is $("$py" -V 2>&1))" >&2
    exit 1
fi
if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
    # Debian/Ubuntu ship venv support separately.
    if command -v apt-get >/dev/null; then
        sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
        $sudo_ apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq python3-venv
    else
        echo "install.sh: $py lacks the venv module; install it first" >&2
        exit 1
    fi
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes -r "$lock"
# The project itself: its dependencies all come from the lock above.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$here"
# Smoke check of the installed (not the source) tree: every module imports, data files ship.
(cd / && "$venv/bin/python" - "$venv" <<'PY'
import importlib, pkgutil, sys
import proxy, certmgr
names = [m.name for pkg in (proxy, certmgr)
         for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
         if not m.name.endswith(".__main__")]  # python -m entry points run on import
for name in names:
    importlib.import_module(name)
from proxy.config import default_toml
assert "[server]" in default_toml()
print(f"installed teeproxy {proxy.__version__} into {sys.argv[1]} ({len(names)} modules import)")
PY
)
