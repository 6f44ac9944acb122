"""`python -m sielum.cli.admin`: sielum-admin without its console script."""

import sys

from sielum.cli.admin import main

if __name__ == "__main__":
    sys.exit(main())
