"""What a revision costs on the enrollment path: an earlier commit's server beside this one.

The rule for new features: no more than 5 % over the floor (the figures of the commit the
performance work ended on) in server CPU per enrollment. This runs both servers side by
side, in alternating runs under the same load (bench/paired.py), each on its own data
directory and SQLite database:

- before: `git archive BASE src`, run from that tree with this venv (PYTHONPATH ahead of
  the installed package), with the flags it knew;
- after: this checkout as installed, as an operator runs it: metrics on and scraped
  (every --scrape-interval seconds), the dashboard listening, every enrollment in the
  audit trail, the hardening checks on.

The server CPU (utime + stime of the server and its workers) over the enrollments it
completed is the figure; each round's after ÷ before ratio, and their spread, are printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procstat
from csrpool import csr_pool
from enroll_bench import ROOT, git_revision, machine
from paired import Side, alternate, summarize
from sielum_proc import SielumProcess, start_sielum

FLOOR = "84d91dd"  # where the performance issue ended: today's figures are the floor
LIMIT = 1.05


def export_src(revision: str, into: Path) -> Path:
    """The src/ tree of `revision`, as a directory a server can run from."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default=FLOOR, help="the revision to compare against")
    parser.add_argument("--rounds", type=int, default=5, help="before/after pairs")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--max-calls", type=int, default=6000, help="calls per run at most")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--mode", default="reused", choices=("reused", "new"))
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--channels", type=int, default=8, help="reused mode: channels/process")
    parser.add_argument("--workers", type=int, default=None, help="serve --workers N (both)")
    parser.add_argument(
        "--scrape-interval", type=float, default=15.0, help="seconds between /metrics GETs"
    )
    parser.add_argument(
        "--after-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more `serve` argument for the after server, e.g. --after-arg=--metrics-addr=off "
        "to see what a feature costs (repeatable; it overrides the defaults above)",
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 s")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = min(args.rounds, 3), min(args.duration, 2.0)
        args.max_calls = min(args.max_calls, 3000)

    work = Path(tempfile.mkdtemp(prefix="sielum-revision-cost-"))
    base_src = export_src(args.base, work / "before")
    print(f"before: {args.base} (src/ from git archive); after: {git_revision()}", flush=True)
    pool = csr_pool(2 * args.rounds * args.max_calls)
    servers: dict[str, SielumProcess] = {}
    try:
        servers["before"] = start_sielum(
            work / "before-data", workers=args.workers, server_src=base_src
        )
        servers["after"] = start_sielum(
            work / "after-data",
            workers=args.workers,
            metrics=True,
            dashboard=True,
            extra=tuple(args.after_arg),
        )
        for server in servers.values():
            if args.workers and args.workers > 1:
                procstat.wait_for_children(server.pid, args.workers)
        time.sleep(1.0)
        sides = {
            "before": Side(servers["before"], servers["before"].create_token()),
            "after": Side(
                servers["after"],
                servers["after"].create_token(),
                scrape_interval=args.scrape_interval,
            ),
        }
        rows = alternate(sides, pool, args)
    finally:
        codes = {state: server.stop() for state, server in servers.items()}
        shutil.rmtree(work, ignore_errors=True)

    summary = summarize(rows, "before", "after")
    low, high = summary["paired_ratio_range"]
    verdict = "within" if summary["paired_ratio_median"] <= LIMIT else "OVER"
    print()
    print(
        f"server CPU per enrollment: before {summary['before_us_median']:.0f} µs, after "
        f"{summary['after_us_median']:.0f} µs (medians of {args.rounds}); after ÷ before "
        f"{summary['ratio_of_medians']:.3f}; paired rounds {low:.3f}-{high:.3f} (median "
        f"{summary['paired_ratio_median']:.3f}: {verdict} the {LIMIT - 1:.0%} budget)"
    )
    print(f"exit codes after SIGTERM: {codes}")
    if args.json_out:
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "revision": git_revision(),
            "base": args.base,
            "machine": machine(),
            "settings": {k: str(v) for k, v in vars(args).items()},
            "rows": rows,
            "summary": summary,
            "exit_codes": codes,
        }
        args.json_out.write_text(json.dumps(report, indent=1))
        print(f"figures written to {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
