#!/usr/bin/env bash
# Quickstart (a): install teeproxy into .venv and run `teeproxy demo` on its embedded defaults:
# a built-in OpenAI-compatible demo model behind the proxy on https://localhost:8443.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/install.sh" "$here/.venv"
exec "$here/.venv/bin/teeproxy" demo "$@"
