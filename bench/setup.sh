#!/usr/bin/env bash
# Installs what the benchmarks need: Sielum with the bench extra (py-spy, pyinstrument)
# into .venv, cfssl from Debian (golang-cfssl) as the peer, and a running PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[bench]" 2>&1 \
  | grep -v "^WARNING: Location" || true
if ! command -v cfssl >/dev/null; then
  echo "==> installing cfssl (Debian package golang-cfssl)"
  apt-get update -qq
  apt-get install -y -qq golang-cfssl >/dev/null
fi
cfssl version | head -1
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "==> starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
