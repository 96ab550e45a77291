#!/usr/bin/env bash
# Regenerate the hash-pinned lock files from pyproject.toml (needs pip-tools >= 7.4).
# --pre: eth-tester and py-evm publish only beta releases; lock-constraints.txt keeps every
# other package on stable releases.
set -euo pipefail
cd "$(dirname "$0")/.."
common=(--quiet --pre -c lock-constraints.txt --no-emit-index-url --no-emit-find-links
        --strip-extras --generate-hashes --allow-unsafe)
pip-compile "${common[@]}" -o requirements.lock pyproject.toml
pip-compile "${common[@]}" --extra test -o requirements-test.lock pyproject.toml
