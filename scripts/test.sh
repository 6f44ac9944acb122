#!/usr/bin/env bash
# Installs Sielum with its test tools and runs every check: lint, types, generated
# code, buf lint, and the whole pytest suite on SQLite and PostgreSQL.
#   bash scripts/test.sh                  # everything: two pytest workers, then the
#                                         # tests that stop PostgreSQL, alone
#   bash scripts/test.sh tests/e2e -x     # arguments: one pytest run of just those
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --test

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "==> starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi

echo "==> ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "==> mypy"
.venv/bin/mypy
echo "==> buf lint"
node_modules/.bin/buf lint
if [ "$#" -gt 0 ]; then
  echo "==> pytest $*"
  exec .venv/bin/pytest "$@"
fi
# Most tests wait on servers, subprocesses and PostgreSQL rather than the CPU: two
# workers (pytest-xdist) take the suite in about two thirds of the time. Work stealing
# evens out the long tests. A test marked `exclusive` stops the PostgreSQL server the
# others share, so it runs after them, alone.
echo "==> pytest, two workers"
.venv/bin/pytest -n 2 --dist worksteal -m "not exclusive"
echo "==> pytest, the tests that stop PostgreSQL"
exec .venv/bin/pytest -m exclusive
