"""Import grpc with its C core's own stderr lines turned off, for the client commands.

gRPC's C core writes lines of its own to stderr ("I1207 21:02:42 ...
ssl_transport_security.cc] Handshake failed ..."); sielum-agent and sielum-admin print
their own one-line diagnosis instead. The core reads GRPC_VERBOSITY while grpc is
imported, and not later, so the variable is set for that import only and then put back
as it was: nothing this process starts inherits it. GRPC_VERBOSITY=info in the
environment brings the lines back for debugging. Import this module before anything
that imports grpc.
"""

from __future__ import annotations

import os
import sys

if "grpc" not in sys.modules:
    _given = os.environ.get("GRPC_VERBOSITY")
    os.environ["GRPC_VERBOSITY"] = _given or "NONE"
    try:
        import grpc  # noqa: F401
    finally:
        if _given is None:
            del os.environ["GRPC_VERBOSITY"]
