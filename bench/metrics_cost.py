"""What metrics cost: server CPU per enrollment with --metrics-addr on and off, runs alternating.

Two `sielum-server serve` processes with the same settings run side by side on one
data directory and one SQLite database, one with metrics and one with
`--metrics-addr off`; the load goes to each in turn, round after round, the order
flipping every round, so that whatever else the machine does falls on both alike.
While the metrics server is under load, a scraper GETs /metrics every
--scrape-interval seconds (1 s: harsher than Prometheus's usual 15 s), so its CPU
is part of the figure. Each run's server CPU is utime + stime of the server and its
workers (/proc), over the calls it completed.

Before the rounds, two measurements in a fresh interpreter in multiprocess mode,
free of gRPC and of most scheduling noise (CPU time of one thread):
- the floor: the very calls the server makes per enrollment (the interceptor's
  observe_call, the enrollment's result and its certificate) in a bare loop, and one
  scrape of their files;
- the steps: Sielum's whole enrollment (as bench/steps_loop.py: request parsed, token
  and CSR checked, signed, the SQLite transaction, the log line, the reply) in small
  blocks that alternate between an Enroller without metrics and one with them (plus
  the interceptor's timing and observe_call), 40 pairs of blocks to a row. Without
  gRPC's share of the work, its ratio is an upper bound of what metrics add to a
  server's CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procstat
from csrpool import csr_pool
from enroll_bench import git_revision, machine
from paired import Side, alternate, summarize
from sielum_proc import SielumProcess, start_sielum

_FLOOR = r"""
import json, os, sys, tempfile, time
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sielum-metrics-floor-")
import grpc
from prometheus_client.exposition import generate_latest
from sielum.recorder import CertificateKind, EnrollmentResult
from sielum.server.app import method_types
from sielum.server.metrics import Metrics
from pathlib import Path
metrics = Metrics(method_types(), directory=Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
method = "/sielum.enroll.v1.EnrollService/Enroll"
n = int(sys.argv[1])
for _ in range(1000):  # warm: the labelled children exist
    metrics.observe_call("grpc", method, grpc.StatusCode.OK, 0.001)
started = time.process_time()
for _ in range(n):
    metrics.observe_call("grpc", method, grpc.StatusCode.OK, 0.001)
    metrics.enrollment(EnrollmentResult.OK)
    metrics.certificate_issued(CertificateKind.DEVICE)
per_enrollment = (time.process_time() - started) / n
registry = metrics.registry()
started = time.process_time()
for _ in range(100):
    body = generate_latest(registry)
per_scrape = (time.process_time() - started) / 100
print(json.dumps({"us_per_enrollment": per_enrollment * 1e6, "ms_per_scrape": per_scrape * 1e3,
                  "scrape_bytes": len(body)}))
import shutil; shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"])
"""


_STEPS = r"""
import json, logging, os, subprocess, sys, tempfile, time
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sielum-metrics-steps-")
import grpc
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from csrpool import csr_pool
from sielum.admin.service import Administration
from sielum.identity import Caller
from sielum.ca.authority import CertificateAuthority
from sielum.clock import SystemClock
from sielum.enroll.ratelimit import FailureLimit, FailureLimiter
from sielum.enroll.service import Enroller
from sielum.enroll.servicer import EnrollServicer
from sielum.enroll.v1 import enroll_pb2
from sielum.identity import Call
from sielum.logs import configure_logging
from sielum.server.app import method_types
from sielum.server.metrics import Metrics
from sielum.store.store import Store

block, rounds = int(sys.argv[1]), int(sys.argv[2])
work = Path(tempfile.mkdtemp(prefix="sielum-steps-"))
server = Path(sys.executable).parent / "sielum-server"
subprocess.run([str(server), "init", "--data-dir", str(work)], check=True, capture_output=True)
configure_logging("json")
logging.getLogger().handlers[0].setStream((work / "sielum.log").open("w"))
clock, store = SystemClock(), Store.open(f"sqlite:///{work / 'sielum.db'}")
ca = CertificateAuthority.load(work, passphrase=None)
secret = Administration(store, clock).create_token(
    Caller(name="bench", peer="127.0.0.1"), label="steps", max_uses=None, expires_at=None
).secret.reveal()
metrics = Metrics(method_types(), directory=Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
limiter = FailureLimiter(FailureLimit())
servicers = {
    "off": EnrollServicer(Enroller(store, ca, clock, limiter), ":8443"),
    "on": EnrollServicer(Enroller(store, ca, clock, limiter, metrics), ":8443"),
}
method = "/sielum.enroll.v1.EnrollService/Enroll"
call = Call(method=method, caller=None, peer="127.0.0.1")
pems = iter(csr_pool(2 * block * rounds * 40 + 200))

def run(state, n):
    servicer, observe = servicers[state], metrics.observe_call if state == "on" else None
    raws = [enroll_pb2.EnrollRequest(token=secret, csr_pem=next(pems), hostname="h")
            .SerializeToString() for _ in range(n)]
    started = time.process_time()
    for raw in raws:
        t0 = time.perf_counter()
        servicer.Enroll(enroll_pb2.EnrollRequest.FromString(raw), call).SerializeToString()
        if observe is not None:
            observe("grpc", method, grpc.StatusCode.OK, time.perf_counter() - t0)
    return (time.process_time() - started) / n * 1e6

run("on", 100); run("off", 100)  # warm both
# Small blocks, alternating, so that the machine's ups and downs fall on both alike;
# a row sums `pairs` pairs of blocks.
pairs = 40
rows = []
for r in range(rounds):
    spent = {"on": 0.0, "off": 0.0}
    for p in range(pairs):
        for state in (("on", "off") if p % 2 == 0 else ("off", "on")):
            spent[state] += run(state, block)
    rows.append({state: us / pairs for state, us in spent.items()})
print(json.dumps(rows))
store.close()
import shutil; shutil.rmtree(work); shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"])
"""


def steps(block: int, rounds: int) -> list[dict[str, float]]:
    """µs of CPU per enrollment without gRPC, metrics on and off, in alternating blocks."""
    out = subprocess.run(
        [sys.executable, "-c", _STEPS, str(block), str(rounds), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    return list(json.loads(out.stdout))


def floor(calls: int) -> dict[str, float]:
    """The recording calls of one enrollment, and one scrape, timed in a bare loop."""
    out = subprocess.run(
        [sys.executable, "-c", _FLOOR, str(calls)], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="on/off pairs")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--max-calls", type=int, default=6000, help="calls per run at most")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--mode", default="reused", choices=("reused", "new"))
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--channels", type=int, default=8, help="reused mode: channels/process")
    parser.add_argument("--workers", type=int, default=None, help="serve --workers N")
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--step-block", type=int, default=25, help="enrollments per block")
    parser.add_argument(
        "--step-rounds", type=int, default=6, help="rows of 40 on/off block pairs each"
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 s")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = min(args.rounds, 3), min(args.duration, 2.0)
        args.max_calls = min(args.max_calls, 3000)
        args.step_block, args.step_rounds = min(args.step_block, 10), min(args.step_rounds, 3)

    print("floor: the recording calls of one enrollment, in a bare loop", flush=True)
    bare = floor(200_000)
    print(
        f"  {bare['us_per_enrollment']:.1f} us per enrollment; a scrape "
        f"{bare['ms_per_scrape']:.2f} ms ({bare['scrape_bytes']} bytes)",
        flush=True,
    )

    print("steps: Sielum's enrollment without gRPC, blocks alternating on and off", flush=True)
    step_rows = steps(args.step_block, args.step_rounds)
    step_ratios = [row["on"] / row["off"] for row in step_rows]
    for n, row in enumerate(step_rows, 1):
        print(
            f"  blocks {n}: off {row['off']:.0f} µs, on {row['on']:.0f} µs, "
            f"on ÷ off {row['on'] / row['off']:.3f}",
            flush=True,
        )

    work = Path(tempfile.mkdtemp(prefix="sielum-metrics-cost-"))
    runs = 2 * args.rounds
    print(f"CSR pool: {runs * args.max_calls} distinct P-256 CSRs", flush=True)
    pool = csr_pool(runs * args.max_calls)
    data_dir = work / "data"
    servers: dict[str, SielumProcess] = {
        "off": start_sielum(data_dir, workers=args.workers, metrics=False),
        "on": start_sielum(data_dir, workers=args.workers, metrics=True),
    }
    try:
        for server in servers.values():
            if args.workers and args.workers > 1:
                procstat.wait_for_children(server.pid, args.workers)
        time.sleep(1.0)
        token = servers["on"].create_token()  # one database: either server takes it
        sides = {
            "on": Side(servers["on"], token, scrape_interval=args.scrape_interval),
            "off": Side(servers["off"], token),
        }
        rows = alternate(sides, pool, args, label=lambda state: f"metrics-{state}")
    finally:
        codes = {state: server.stop() for state, server in servers.items()}
        shutil.rmtree(work, ignore_errors=True)

    paired = summarize(rows, "off", "on")
    ratios = paired["paired_ratio_range"]
    summary = {
        **paired,
        "floor_share_of_off_median": bare["us_per_enrollment"] / paired["off_us_median"],
        "steps_off_us_median": statistics.median(r["off"] for r in step_rows),
        "steps_on_us_median": statistics.median(r["on"] for r in step_rows),
        "steps_ratio_median": statistics.median(step_ratios),
        "steps_ratio_range": [min(step_ratios), max(step_ratios)],
    }
    print()
    print(
        f"server CPU per enrollment: off {summary['off_us_median']:.0f} µs, on "
        f"{summary['on_us_median']:.0f} µs (medians of {args.rounds}); on ÷ off "
        f"{summary['ratio_of_medians']:.3f}; paired rounds {ratios[0]:.3f}-{ratios[1]:.3f} "
        f"(median {summary['paired_ratio_median']:.3f})"
    )
    print(
        f"floor: {bare['us_per_enrollment']:.1f} µs per enrollment = "
        f"{100 * summary['floor_share_of_off_median']:.1f} % of the off median"
    )
    print(
        f"steps without gRPC: off {summary['steps_off_us_median']:.0f} µs, on "
        f"{summary['steps_on_us_median']:.0f} µs; on ÷ off {min(step_ratios):.3f}-"
        f"{max(step_ratios):.3f} (median {summary['steps_ratio_median']:.3f})"
    )
    print(f"exit codes after SIGTERM: {codes}")
    if args.json_out:
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "revision": git_revision(),
            "machine": machine(),
            "settings": {k: str(v) for k, v in vars(args).items()},
            "floor": bare,
            "steps": step_rows,
            "rows": rows,
            "summary": summary,
            "exit_codes": codes,
        }
        args.json_out.write_text(json.dumps(report, indent=1))
        print(f"figures written to {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
