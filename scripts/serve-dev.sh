#!/usr/bin/env bash
# Installs Sielum, makes a CA in ./sielum-data on first run, and serves on SQLite.
# Stop with Ctrl-C (SIGINT) or SIGTERM: calls in flight finish first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
DATA="${SIELUM_DATA_DIR:-$PWD/sielum-data}"
BIN="$PWD/.venv/bin"
if [ ! -f "$DATA/ca.pem" ]; then
  "$BIN/sielum-server" init --data-dir "$DATA" >/dev/null
fi
FP="$("$BIN/sielum-server" fingerprint --data-dir "$DATA")"
cat <<MSG

Sielum is starting on SQLite ($DATA/sielum.db).
  enroll port (server-only TLS): 127.0.0.1:8443
  api port (mTLS):               127.0.0.1:8444
  dashboard (HTTPS):             https://127.0.0.1:8445  (trust $DATA/ca.pem in your browser)
  CA fingerprint:                $FP

Next, in another terminal:
  1. make an enrollment token (the secret is shown once):
       $BIN/sielum-admin --cert-dir $DATA/admin tokens create --label first-rollout --max-uses 10 --expires-in 7d
  2. on the endpoint, enroll the agent with that secret:
       SIELUM_ENROLLMENT_TOKEN='slm_...' sielum-agent enroll --server https://127.0.0.1:8443 \\
         --ca-fingerprint $FP --cert-dir /etc/sielum
  3. list enrolled devices:
       $BIN/sielum-admin --cert-dir $DATA/admin devices list
  or do all of it in the dashboard: open the one-time link this prints
       $BIN/sielum-admin --cert-dir $DATA/admin dashboard login

MSG
exec "$BIN/sielum-server" serve --data-dir "$DATA" "$@"
