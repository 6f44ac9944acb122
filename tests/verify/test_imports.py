"""sielum.verify runs inside other services: it imports nothing of Sielum's server."""

from __future__ import annotations

import json
import subprocess
import sys

ALLOWED_SIELUM = ("sielum", "sielum.verify", "sielum.directory")


def test_importing_sielum_verify_loads_no_server_module() -> None:
    code = (
        "import json, sys, sielum.verify; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sielum', 'peewee', 'psycopg2', 'aiohttp', 'prometheus_client'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    loaded = json.loads(result.stdout)
    foreign = [
        m
        for m in loaded
        if not any(m == allowed or m.startswith(allowed + ".") for allowed in ALLOWED_SIELUM[1:])
        and m != "sielum"
    ]
    assert foreign == [], f"sielum.verify imports server code: {foreign}"
    assert "sielum.directory.v1.directory_pb2_grpc" in loaded
