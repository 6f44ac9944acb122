"""The per-run directory where each server process keeps its metric values, for /metrics to sum.

prometheus_client's multiprocess mode gives every process its own memory-mapped
files in one directory, named by pid, and sums them all at each scrape. The
values are in the page cache as soon as they are written, so a worker killed
with -9 loses nothing, and its files keep counting in the sum after the
supervisor has restarted it; no counter resets or doubles. The library picks
the mode from PROMETHEUS_MULTIPROC_DIR when it is first imported, so `serve`
sets that variable before anything imports prometheus_client, and its workers
inherit it.

Each run gets a directory of its own, so no file of an earlier run can leak into
this one's figures (tests/e2e/test_metrics.py::test_a_new_run_starts_from_zero).
Sielum's gauges are computed at scrape time from the database, but for one:
sielum_crl_age_seconds, which each worker sets for the CRL it serves (a "livemax"
gauge); the supervisor forgets the file of a worker that exited
(forget_process), so a dead worker's last age does not stay in the maximum.

This module does not import prometheus_client: it runs before it may be.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "sielum-metrics-"


def create_run_directory(environ: Mapping[str, str]) -> Path:
    """A new, empty directory for this run's metric files.

    It is made in PROMETHEUS_MULTIPROC_DIR when that is set (say, a tmpfs the
    operator chose), else in the temporary directory. Directories left there by
    runs whose process is gone (killed with -9) are removed first.
    """
    base = Path(environ.get(ENV) or tempfile.gettempdir())
    remove_stale_directories(base)
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))


def remove_run_directory(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def forget_process(directory: Path, pid: int) -> None:
    """Drop the live gauges' files of an exited process, as prometheus_client's
    mark_process_dead does: its counters keep counting in the sum, its live gauges no more."""
    for path in directory.glob(f"gauge_live*_{pid}.db"):
        with contextlib.suppress(OSError):
            path.unlink()


def remove_stale_directories(base: Path) -> None:
    """Remove our directories in base whose process no longer runs."""
    uid = os.getuid()
    for entry in base.glob(f"{PREFIX}*-*"):
        pid_text = entry.name[len(PREFIX) :].split("-", 1)[0]
        with contextlib.suppress(OSError):
            if not pid_text.isdigit() or not entry.is_dir() or entry.stat().st_uid != uid:
                continue
            if _alive(int(pid_text)):
                continue
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
