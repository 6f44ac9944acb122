"""sielum.verify runs inside other services: it imports nothing of Sielum's server."""

from __future__ import annotations

import json
import subprocess
import sys

# What a fresh interpreter may load of Sielum's package and the server's dependencies.
ALLOWED = ("sielum", "sielum.verify", "sielum.directory")
WATCHED = ("sielum", "peewee", "psycopg2", "aiohttp", "prometheus_client")


def test_importing_sielum_verify_loads_no_server_module() -> None:
    code = (
        "import json, sys, sielum.verify; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {WATCHED!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    foreign = [m for m in loaded if not any(m == a or m.startswith(a + ".") for a in ALLOWED[1:])]
    assert foreign == ["sielum"], f"sielum.verify imports server code: {foreign}"
    assert "sielum.directory.v1.directory_pb2_grpc" in loaded
