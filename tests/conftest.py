"""Shared fixtures: a database URL for SQLite and for PostgreSQL, each test on a fresh database."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PG_HOST = os.environ.get("SIELUM_TEST_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("SIELUM_TEST_PG_PORT", "5432")
PG_USER = os.environ.get("SIELUM_TEST_PG_USER", "postgres")
PG_ADMIN_DB = os.environ.get("SIELUM_TEST_PG_DB", "test")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked long go first: a parallel run starts a worker on them while the rest share
    the other, instead of one worker finishing a long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """In CI a skip is a failure: every test must run there (.ci/run installs every
    part the tests drive), and a skipped one is never counted as passing. Outside CI a
    skip still says why (a missing package, not root)."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {reason}"


# Which browser the dashboard's tests ran: in the header, and after the run. With
# pytest-xdist the tests run in worker processes, so each worker hands the versions it
# launched to the controller, which prints them (hence here, the conftest it loads).
def pytest_report_header() -> str:
    from tests.browser.conftest import CHROMIUM, chromium_version

    return f"browser: {chromium_version()} at {CHROMIUM}"


def pytest_sessionfinish(session: pytest.Session) -> None:
    output = getattr(session.config, "workeroutput", None)
    if output is not None:  # an xdist worker
        from tests.browser.conftest import RAN

        output["chromium_ran"] = sorted(set(RAN))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    from tests.browser.conftest import RAN

    RAN.extend(getattr(node, "workeroutput", {}).get("chromium_ran", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.browser.conftest import CHROMIUM, RAN, SCREENSHOTS

    if RAN:
        terminalreporter.write_line(
            f"dashboard browser tests ran in Chromium {', '.join(sorted(set(RAN)))} "
            f"({CHROMIUM}); screenshots in {SCREENSHOTS}"
        )


def _pg_admin() -> object:
    import psycopg2

    conn = psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_ADMIN_DB, connect_timeout=3
    )
    conn.autocommit = True
    return conn


def postgres_available() -> str | None:
    """None when PostgreSQL answers, else why not (shown as the skip reason)."""
    try:
        _pg_admin().close()  # type: ignore[attr-defined]
    except Exception as exc:
        return f"PostgreSQL at {PG_HOST}:{PG_PORT} is not reachable: {exc}".strip()
    return None


def _require_postgres() -> None:
    reason = postgres_available()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI must run the PostgreSQL suite; .ci/run starts the server)")
    pytest.skip(reason)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    _require_postgres()
    name = f"sielum_test_{uuid.uuid4().hex[:12]}"
    conn = _pg_admin()
    cur = conn.cursor()  # type: ignore[attr-defined]
    cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()  # type: ignore[attr-defined]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sielum.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every storage test runs twice: on SQLite in a temp dir and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sielum.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


def openssl_verify(ca_pem: Path, cert_pem: Path) -> subprocess.CompletedProcess[str]:
    """Runs `openssl verify -CAfile` on a certificate; the result is for the test to assert."""
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_pem), str(cert_pem)],
        capture_output=True,
        text=True,
        check=False,
    )
