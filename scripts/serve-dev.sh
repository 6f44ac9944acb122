#!/usr/bin/env bash
# Installs Sielum, makes a CA in ./sielum-data on first run, and serves on SQLite.
# Prints the commands that make a token and enroll a demo agent on this machine,
# each runnable as printed. Stop with Ctrl-C (SIGINT) or SIGTERM: calls in flight
# finish first.
#
# Environment: SIELUM_DATA_DIR (default ./sielum-data), SIELUM_ENROLL_ADDR (default
# 127.0.0.1:8443), SIELUM_API_ADDR (default 127.0.0.1:8444), SIELUM_METRICS_ADDR
# (default 127.0.0.1:9464, or off), SIELUM_DASHBOARD_ADDR (default 127.0.0.1:8445, or
# off). Other arguments go to `serve`.
#
# The install step runs only when something changed since the last one: a stamp in
# .venv records pyproject.toml, scripts/bootstrap.sh and the installed version (the
# install is editable, so changes to src/ need none). SIELUM_INSTALL=1 installs anyway;
# SIELUM_SKIP_INSTALL=1 skips it whenever .venv has sielum-server.
set -euo pipefail
cd "$(dirname "$0")/.."
STAMP=.venv/.sielum-install-stamp
install_stamp() {
  # What an install depends on; empty output when nothing is installed yet.
  [ -x .venv/bin/sielum-server ] && [ -x .venv/bin/python ] || return 0
  local version
  version="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("sielum"))' 2>/dev/null)" || return 0
  printf 'sielum %s\n' "$version"
  sha256sum pyproject.toml scripts/bootstrap.sh
}
if [ "${SIELUM_SKIP_INSTALL:-}" = 1 ] && [ -x .venv/bin/sielum-server ]; then
  :
elif [ "${SIELUM_INSTALL:-}" != 1 ] && [ -f "$STAMP" ] && [ "$(install_stamp)" = "$(cat "$STAMP")" ]; then
  echo "==> sielum is installed in .venv and nothing changed since (SIELUM_INSTALL=1 to install anyway)"
else
  bash scripts/bootstrap.sh
  stamp="$(install_stamp)"
  [ -z "$stamp" ] || printf '%s\n' "$stamp" > "$STAMP"
fi
DATA="${SIELUM_DATA_DIR:-$PWD/sielum-data}"
DATA="$(mkdir -p "$DATA" && cd "$DATA" && pwd)"
ENROLL_ADDR="${SIELUM_ENROLL_ADDR:-127.0.0.1:8443}"
API_ADDR="${SIELUM_API_ADDR:-127.0.0.1:8444}"
METRICS_ADDR="${SIELUM_METRICS_ADDR:-127.0.0.1:9464}"
DASHBOARD_ADDR="${SIELUM_DASHBOARD_ADDR:-127.0.0.1:8445}"
BIN="$PWD/.venv/bin"
if [ ! -f "$DATA/ca.pem" ]; then
  "$BIN/sielum-server" init --data-dir "$DATA" >/dev/null
fi
FP="$("$BIN/sielum-server" fingerprint --data-dir "$DATA")"
q() { printf '%q' "$1"; }
# The agent command `tokens create` prints names the API host on port 8443 unless told.
ENROLL_SERVER=""
[ "$ENROLL_ADDR" = 127.0.0.1:8443 ] || ENROLL_SERVER=" --enroll-server https://$ENROLL_ADDR"
cat <<MSG

Sielum is starting on SQLite ($DATA/sielum.db).
  enroll port (server-only TLS): $ENROLL_ADDR
  api port (mTLS):               $API_ADDR
  metrics (Prometheus):          $([ "$METRICS_ADDR" = off ] && echo off || echo "http://$METRICS_ADDR/metrics")
  dashboard (HTTPS):             $([ "$DASHBOARD_ADDR" = off ] && echo off || echo "https://$DASHBOARD_ADDR  (trust $(q "$DATA/ca.pem") in your browser)")
  CA fingerprint:                $FP

Next, in another terminal:
  1. make an enrollment token (the secret is shown once):
       $(q "$BIN/sielum-admin") --server $API_ADDR --cert-dir $(q "$DATA/admin") tokens create --label first-rollout --max-uses 10 --expires-in 7d$ENROLL_SERVER
  2. enroll a demo agent on this machine: paste the secret when asked
       read -rsp 'enrollment token: ' SIELUM_ENROLLMENT_TOKEN && export SIELUM_ENROLLMENT_TOKEN && echo
       $(q "$BIN/sielum-agent") enroll --server https://$ENROLL_ADDR --ca-fingerprint $FP --cert-dir $(q "$DATA/agent")
       $(q "$BIN/sielum-agent") status --cert-dir $(q "$DATA/agent")
  3. list enrolled devices:
       $(q "$BIN/sielum-admin") --server $API_ADDR --cert-dir $(q "$DATA/admin") devices list
  4. or do it all in the web dashboard: paste the one-time link this prints into your
     browser's address bar, never into a command ("dashboard open" opens it for you)
       $(q "$BIN/sielum-admin") --server $API_ADDR --cert-dir $(q "$DATA/admin") dashboard login

On a real endpoint, install Sielum there and run step 2 as root with --cert-dir
/etc/sielum and the enroll port's name for the server.

MSG
exec "$BIN/sielum-server" serve --data-dir "$DATA" --enroll-addr "$ENROLL_ADDR" --api-addr "$API_ADDR" \
  --metrics-addr "$METRICS_ADDR" --dashboard-addr "$DASHBOARD_ADDR" "$@"
