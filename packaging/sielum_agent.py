"""Entry point of the agent's self-contained executable (scripts/build-agent.sh)."""

import sys

from sielum.cli.agent import main

sys.exit(main())
