#!/usr/bin/env bash
# Regenerates the protobuf and gRPC stubs from proto/ into src/sielum/<service>/v1/.
# tests/test_generated.py fails when running this would change a committed file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT="${1:-src}"
mkdir -p "$OUT"
"$PY" -m grpc_tools.protoc -Iproto \
  --python_out="$OUT" --grpc_python_out="$OUT" \
  --mypy_out="$OUT" --mypy_grpc_out="$OUT" \
  --plugin=protoc-gen-mypy="$(dirname "$PY")/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$PY")/protoc-gen-mypy_grpc" \
  $(cd proto && find . -name '*.proto' | sort | sed 's|^\./||')
for d in $(cd proto && find sielum -type d); do
  [ -f "$OUT/$d/__init__.py" ] || : > "$OUT/$d/__init__.py"
done
