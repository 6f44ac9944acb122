"""`sielum-server` with a fault injected around the real Store, for the crash and shutdown tests.

Usage: python faulty_serve.py ENROLL_DELAY_SECONDS serve --data-dir ...

Every Store.enroll_device sleeps ENROLL_DELAY_SECONDS before it runs the real
transaction, so a test knows that calls are in flight when it signals the server.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from sielum.cli import server
from sielum.store.store import Store


def main(argv: list[str]) -> int:
    delay = float(argv[0])
    real_enroll_device = Store.enroll_device

    def slow_enroll_device(self: Store, *args: Any, **kwargs: Any) -> Any:
        time.sleep(delay)
        return real_enroll_device(self, *args, **kwargs)

    Store.enroll_device = slow_enroll_device  # type: ignore[method-assign]
    return server.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
