"""serve's SignalInbox: a signal ends the main loop's sleep and is kept for it."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from sielum.server.signals import SignalInbox


@pytest.mark.timeout(60)
def test_sigterm_ends_the_sleep_and_is_kept() -> None:
    previous = {
        sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    inbox = SignalInbox()
    inbox.install()
    try:
        threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGHUP)).start()
        inbox.wait(3600)  # only the signal can end an hour's sleep within the test
        assert inbox.take_hangups() == 1
        assert inbox.take_hangups() == 0
        assert inbox.stop is None
        threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        inbox.wait(3600)
        assert inbox.stop == signal.SIGTERM
        assert inbox.stop_name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)  # a later signal does not replace the first
        inbox.wait(3600)
        assert inbox.stop_name == "SIGTERM"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
