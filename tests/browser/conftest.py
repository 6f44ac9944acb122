"""A real `sielum-server serve` and Debian's chromium, driven by Playwright, for the dashboard.

The browser trusts no certificate but the Sielum CA's: chromium is launched with
the CA's public key pinned (--ignore-certificate-errors-spki-list), and no
context ignores HTTPS errors, so a page from any other certificate fails to load.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.e2e.conftest import ServerProcess, admin, init_data_dir, start_server

CHROMIUM = os.environ.get("SIELUM_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).parent / "screenshots"
DOCS_IMAGES = Path(__file__).parents[2] / "docs" / "images"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_version() -> str:
    """'Chromium 156.0.8078.114 …' or why there is none."""
    if not shutil.which(CHROMIUM):
        return f"missing ({CHROMIUM})"
    result = subprocess.run(
        [CHROMIUM, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    return result.stdout.strip() or result.stderr.strip().splitlines()[-1]


RAN: list[str] = []  # the version of each browser the tests launched (tests/conftest.py reports it)


def require_chromium() -> None:
    """The browser tests never skip: a machine without chromium fails them, saying how to fix it."""
    if not shutil.which(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard's browser tests need Debian's chromium "
            "(bash scripts/install-test-packages.sh installs it)"
        )


def spki_pin(certificate_pem: bytes) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): chromium's form of a public-key pin."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    der = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@dataclass
class Dashboard:
    """The server under test, with the ways a test reads it."""

    server: ServerProcess
    tmp: Path

    @property
    def url(self) -> str:
        return self.server.dashboard_url

    @property
    def ca_pem(self) -> bytes:
        return (self.server.data_dir / "ca.pem").read_bytes()

    def login_link(self) -> str:
        """`sielum-admin dashboard login`, as an admin runs it."""
        result = admin(self.server, "dashboard", "login")
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read (or, for fault injection, write) the server's SQLite database directly."""
        connection = sqlite3.connect(self.server.data_dir / "sielum.db", timeout=30)
        try:
            with connection:
                return connection.execute(query, params).fetchall()
        finally:
            connection.close()

    def everything(self) -> tuple[object, ...]:
        """All a refused request must leave as it was."""
        return (
            self.sql("SELECT id, label, uses, revoked_at FROM token ORDER BY seq"),
            self.sql("SELECT id, serial, revoked_at FROM device ORDER BY seq"),
            self.sql("SELECT COUNT(*) FROM audit_event"),
            self.sql("SELECT admin, expires_at FROM dashboard_session ORDER BY seq"),
        )


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """One server for the module: two workers sharing the dashboard port, sessions in SQLite."""
    require_chromium()
    tmp = tmp_path_factory.mktemp("browser")
    server = start_server(init_data_dir(tmp), "--workers", "2")
    try:
        yield Dashboard(server, tmp)
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGTERM)


@pytest.fixture(scope="module")
def browser(dashboard: Dashboard) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # launch() gives chromium a fresh temporary profile (--user-data-dir) of its own.
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                *CHROMIUM_ARGS,
                # Trust the Sielum CA's key and nothing else that is not already trusted.
                f"--ignore-certificate-errors-spki-list={spki_pin(dashboard.ca_pem)}",
            ],
        )
        RAN.append(chromium.version)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Any, dashboard: Dashboard) -> Iterator[Any]:
    """A fresh browser profile at 1280 px: no cookies, no storage."""
    ctx = browser.new_context(viewport=DESKTOP, ignore_https_errors=False)
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=dashboard.url)
    ctx.set_default_timeout(30_000)
    try:
        yield ctx
    finally:
        ctx.close()
