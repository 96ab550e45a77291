#!/usr/bin/env bash
# Quickstart (b): install everything the tests need on Debian 12 and run the whole suite.
#   - Debian packages: the real peers the tests run against (see APT_PACKAGES);
#   - Python: runtime + test tools from requirements-test.lock into .venv;
#   - then lint (ruff), types (mypy --strict), the import layering (lint-imports: the
#     contracts in pyproject.toml) and every test (pytest).
# Extra arguments go to pytest (e.g. scripts/test.sh -k smuggling).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

# Real peers the tests run against (all on loopback):
#   testssl.sh  TLS policy scan (tests/integration/test_tls_policy.py)
#   pebble      ACME CA (RFC 8555) with its challenge test server
#   knot        authoritative DNS with RFC 2136 updates (DNS-01, CAA)
#   etcd-server three-member etcd cluster the cluster-mode tests coordinate through
#   etcd-client etcdctl, for looking at what the tests left in etcd by hand
APT_PACKAGES=(testssl.sh pebble knot etcd-server etcd-client mmdebstrap skopeo umoci)
command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)

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
# Ethereum tooling from the npm registry (anvil node, solc compiler): exact versions in
# package.json, integrity hashes in package-lock.json. Not `npm ci`: npm 11 cannot record
# @foundry-rs/anvil's per-platform optional packages in a lock, so `npm ci` always refuses
# it as out of sync; `npm install --no-save` installs from the lock and leaves it untouched.
if [ -f "$here/contracts_abi/package-lock.json" ]; then
    npm install --prefix "$here/contracts_abi" --no-save --no-audit --no-fund --loglevel=error
fi
# Tests import the working tree; make sure an editable install points at it.
"$here/.venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$here"

echo "== ruff"; "$here/.venv/bin/ruff" check . && "$here/.venv/bin/ruff" format --check .
echo "== mypy"; "$here/.venv/bin/mypy"
echo "== import layering"; "$here/.venv/bin/lint-imports" --no-cache
echo "== pytest"; exec "$here/.venv/bin/python" -m pytest "$@"
