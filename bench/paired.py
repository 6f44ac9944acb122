"""Two servers under the same load in alternating runs: what one costs beside the other.

The load goes to each server in turn, A, B, B, A, A, B, ...: each round is one run of
each, the order flipping every round, so that whatever else the machine does falls on
both alike. The figure is server CPU (utime + stime of the server and its workers, from
/proc) per completed enrollment; the ratio of each round's pair is what one state costs
over the other, and the spread of those ratios says how far to trust it.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from enroll_bench import Row, measure
from sielum_proc import SielumProcess


class Scraper:
    """GETs /metrics every interval seconds on a thread, as Prometheus would."""

    def __init__(self, port: int, interval: float) -> None:
        self.port, self.interval = port, interval
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=30) as reply:
                reply.read()
            self.scrapes += 1

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Side:
    """One of the two servers, the token it takes, and what runs beside its load."""

    server: SielumProcess
    token: str
    scrape_interval: float = 0.0  # 0: nobody scrapes its /metrics

    def scraper(self) -> contextlib.AbstractContextManager[Scraper | None]:
        if self.scrape_interval and self.server.metrics_port:
            return Scraper(self.server.metrics_port, self.scrape_interval)
        return contextlib.nullcontext()


def alternate(
    sides: dict[str, Side],
    pool: list[str],
    args: argparse.Namespace,
    label: Callable[[str], str] = lambda state: state,
) -> list[dict[str, Any]]:
    """args.rounds rounds of one run per side; each run takes args.max_calls fresh CSRs."""
    first, second = sides
    runs = 2 * args.rounds
    rows: list[dict[str, Any]] = []
    for index in range(runs):
        # first, second, second, first, first, second, ...: each round's first run is the
        # other's last.
        state = (first, second)[(index + index // 2) % 2]
        side = sides[state]
        payloads = pool[index * args.max_calls : (index + 1) * args.max_calls]
        print(f"round {index // 2 + 1}, {label(state)}", flush=True)
        with side.scraper() as scraper:
            row: Row = measure(
                label(state), "enroll", args.mode, args.concurrency,
                side.server.enroll_target, side.server.ca_pem, side.server.pid, payloads,
                side.token, args,
            )  # fmt: skip
        rows.append(
            {
                "round": index // 2 + 1,
                "state": state,
                "us_per_enrollment": row.server_us_per_call,
                "enrollments_per_second": row.figures.per_second,
                "ok": row.figures.ok,
                "errors": dict(row.figures.errors),
                "scrapes": 0 if scraper is None else scraper.scrapes,
                "other_cpu_seconds": row.other_cpu_seconds,
            }
        )
    return rows


def summarize(rows: list[dict[str, Any]], base: str, other: str) -> dict[str, Any]:
    """Prints the rounds as a table and returns the medians and the paired ratios other ÷ base."""
    rounds = sorted({r["round"] for r in rows})
    ratios = []
    print()
    print(
        f"| round | {base} µs/enroll | {other} µs/enroll | {other} ÷ {base} | scrapes "
        f"| other CPU s ({base}, {other}) |"
    )
    print("|---|---|---|---|---|---|")
    for n in rounds:
        pair = {r["state"]: r for r in rows if r["round"] == n}
        ratio = pair[other]["us_per_enrollment"] / pair[base]["us_per_enrollment"]
        ratios.append(ratio)
        print(
            f"| {n} | {pair[base]['us_per_enrollment']:.0f} | "
            f"{pair[other]['us_per_enrollment']:.0f} | {ratio:.3f} | "
            f"{pair[other]['scrapes']} | {pair[base]['other_cpu_seconds']:.1f}, "
            f"{pair[other]['other_cpu_seconds']:.1f} |"
        )
    base_us = [r["us_per_enrollment"] for r in rows if r["state"] == base]
    other_us = [r["us_per_enrollment"] for r in rows if r["state"] == other]
    return {
        f"{base}_us_median": statistics.median(base_us),
        f"{other}_us_median": statistics.median(other_us),
        "ratio_of_medians": statistics.median(other_us) / statistics.median(base_us),
        "paired_ratio_median": statistics.median(ratios),
        "paired_ratio_range": [min(ratios), max(ratios)],
    }
