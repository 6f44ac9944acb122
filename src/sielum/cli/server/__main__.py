"""python -m sielum.cli.server: how the supervisor starts each worker (server/workers.py)."""

import sys

from sielum.cli.server import main

sys.exit(main())
