"""Opening a secret link in the user's browser without putting it on any command line.

A browser started with a URL holds that URL in its argv, and so does every
launcher on the way (xdg-open, gio, a desktop's helper): any local user reads
them in /proc/<pid>/cmdline. A one-time login link there is a session for
whoever posts it first. So the link goes into a file that only its owner may
read (0600, in a 0700 directory of its own), the browser is handed the file's
path, and the file redirects to the link; it is removed once the browser has
read it, or after a short wait in any case
(tests/e2e/test_dashboard_cli.py::test_fail_login_link_read_from_a_process_list).
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
import time
import webbrowser
from collections.abc import Callable
from pathlib import Path

READ_WAIT_SECONDS = 30.0  # at most this long for the browser to read the file
AFTER_READ_SECONDS = 2.0  # a browser may open the file more than once while loading it
_POLL_SECONDS = 0.1


class NoBrowserError(Exception):
    """No browser to open the link with (none installed, no display)."""


def redirect_page(url: str) -> str:
    """A page that sends the browser on to url at once, leaving itself out of the history.

    location.replace() does it with script, the meta refresh without; the link
    is there to click should a browser do neither. The file is local, so the
    dashboard's Content-Security-Policy (no inline script) does not apply to it.
    """
    attribute = html.escape(url, quote=True)
    # "</" cannot end the script element when JSON writes it as "<\/".
    script = json.dumps(url).replace("</", "<\\/")
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f'<meta http-equiv="refresh" content="0;url={attribute}">\n'
        "<title>Signing in to the Sielum dashboard</title>\n"
        f"<script>window.location.replace({script});</script>\n"
        "</head><body>\n"
        f'<p><a href="{attribute}">Continue to the Sielum dashboard</a></p>\n'
        "</body></html>\n"
    )


def find_browser() -> webbrowser.BaseBrowser:
    """The browser webbrowser would use ($BROWSER first), or NoBrowserError."""
    try:
        return webbrowser.get()
    except webbrowser.Error:
        raise NoBrowserError("no web browser found") from None


def write_private_page(url: str) -> Path:
    """The redirect page in a new directory of mode 0700, the file itself 0600."""
    directory = Path(tempfile.mkdtemp(prefix="sielum-login-"))  # mkdtemp makes it 0700
    path = directory / "login.html"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(path, flags, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as page:
        page.write(redirect_page(url))
    return path


def open_privately(
    url: str,
    browser: webbrowser.BaseBrowser,
    *,
    wait: float = READ_WAIT_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Opens url in browser through a private file; True when the browser read the file.

    The file and its directory are gone when this returns, whatever happened.
    """
    path = write_private_page(url)
    try:
        written = os.stat(path).st_atime_ns
        if not browser.open(path.as_uri()):
            raise NoBrowserError(f"the web browser ({browser.name or 'default'}) did not start")
        # Some launchers return at once, others once the browser has the page:
        # the file's access time says when it has been read (where the file
        # system keeps it; else the wait runs out).
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if os.stat(path).st_atime_ns != written:
                sleep(AFTER_READ_SECONDS)
                return True
            sleep(_POLL_SECONDS)
        return False
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
