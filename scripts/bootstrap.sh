#!/usr/bin/env bash
# Installs Sielum into ./.venv (and, with --test, the test tools, the Debian packages
# of scripts/test-packages.txt and the buf CLI).
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
extra=""
pins=()
# The test tools: every tool whose output is committed or compared at its exact version.
[ "${1:-}" = "--test" ] && extra="[test]" && pins=(-c scripts/pins.txt)
echo "==> installing sielum${extra} into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extra}" "${pins[@]}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import sielum, grpc, cryptography, peewee" || { echo "install failed" >&2; exit 1; }
if [ "${1:-}" = "--test" ]; then
  bash scripts/install-test-packages.sh
  echo "==> installing buf (npm @bufbuild/buf) into node_modules"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  node_modules/.bin/buf --version >/dev/null
fi
