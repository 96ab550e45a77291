#!/usr/bin/env bash
# Quickstart (b): install everything the tests need on Debian 12 and run the whole suite.
#   - Debian packages: the real peers the tests run against (see APT_PACKAGES);
#   - Python: runtime + test tools from requirements-test.lock into .venv;
#   - then lint (ruff), types (mypy --strict) and every test (pytest).
# Extra arguments go to pytest (e.g. scripts/test.sh -k smuggling).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

# testssl.sh: TLS policy scan in tests/integration/test_tls_policy.py.
APT_PACKAGES=(testssl.sh)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    echo "test.sh: installing Debian packages: ${missing[*]}"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

"$here/scripts/install.sh" "$here/.venv" --test
# Tests import the working tree; make sure an editable install points at it.
"$here/.venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$here"

echo "== ruff"; "$here/.venv/bin/ruff" check . && "$here/.venv/bin/ruff" format --check .
echo "== mypy"; "$here/.venv/bin/mypy"
echo "== pytest"; exec "$here/.venv/bin/python" -m pytest "$@"
