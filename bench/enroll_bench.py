"""Mass-rollout benchmark: Sielum Enroll vs the health-Check ceiling, cfssl and the crypto floor."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import crypto_floor
import procstat
from csrpool import csr_pool
from loadgen import LoadSpec, RunFigures, run_load, split
from peer_cfssl import cfssl_version, start_cfssl
from sielum_proc import start_sielum

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    system: str  # sielum-enroll | sielum-health | cfssl
    mode: str
    concurrency: int
    figures: RunFigures
    server_cpu_seconds: float
    server_us_per_call: float
    peak_rss_mib: float  # sum over the server's processes
    peak_rss_per_process_mib: float
    per_process_cpu: list[float]
    # Cores each server process kept busy on average, and cores the machine left idle:
    # with workers, shows whether both carry the load and whether anything waits.
    per_process_cores: list[float]
    # Seconds per second the server's threads were ready but waited for a core.
    run_queue_wait: float
    idle_cores: float
    # CPU the rest of the machine used meanwhile (other people's jobs on a shared box):
    # all busy CPU minus this server and this client.
    other_cpu_seconds: float


def measure(
    system: str,
    kind: str,
    mode: str,
    concurrency: int,
    target: str,
    ca_pem: bytes,
    server_pid: int,
    payloads: list[str],
    token: str,
    args: argparse.Namespace,
) -> Row:
    pids = procstat.tree(server_pid)
    clients = max(1, min(args.clients, concurrency))
    shares = split(concurrency, clients)
    calls = split(args.max_calls, clients)
    specs = []
    offset = 0
    for share, n in zip(shares, calls, strict=True):
        specs.append(
            LoadSpec(
                kind=kind,
                mode=mode,
                target=target,
                ca_pem=ca_pem,
                concurrency=share,
                duration=args.duration,
                max_calls=n,
                payloads=tuple(payloads[offset : offset + n]) if payloads else (),
                token=token,
                channels=args.channels,
            )
        )
        offset += n
    cpu: dict[str, list[float]] = {}
    sampler = procstat.MemorySampler(pids)

    def on_start() -> None:
        cpu["start"] = [procstat.cpu_seconds(p) for p in pids]
        cpu["waited"] = [sum(procstat.run_queue_wait_seconds(p) for p in pids)]
        cpu["machine"] = [procstat.machine_busy_seconds()]
        cpu["wall"] = [time.monotonic()]
        sampler.__enter__()

    def on_end() -> None:
        cpu["end"] = [procstat.cpu_seconds(p) for p in pids]
        cpu["waited"].append(sum(procstat.run_queue_wait_seconds(p) for p in pids))
        cpu["machine"].append(procstat.machine_busy_seconds())
        cpu["wall"].append(time.monotonic())
        sampler.__exit__()

    figures = run_load(specs, on_start, on_end, timeout=args.duration + 120)
    per_process = [e - s for s, e in zip(cpu["start"], cpu["end"], strict=True)]
    server_cpu = sum(per_process)
    wall = cpu["wall"][1] - cpu["wall"][0]
    machine_busy = cpu["machine"][1] - cpu["machine"][0]
    row = Row(
        system=system,
        mode=mode,
        concurrency=concurrency,
        figures=figures,
        server_cpu_seconds=server_cpu,
        server_us_per_call=server_cpu / figures.ok * 1e6 if figures.ok else float("nan"),
        peak_rss_mib=sampler.peak_total_kib / 1024,
        peak_rss_per_process_mib=sampler.peak_per_process_kib / 1024,
        per_process_cpu=per_process,
        per_process_cores=[c / wall for c in per_process],
        run_queue_wait=(cpu["waited"][1] - cpu["waited"][0]) / wall,
        idle_cores=max(0.0, (os.cpu_count() or 1) - machine_busy / wall),
        other_cpu_seconds=max(
            0.0,
            cpu["machine"][1] - cpu["machine"][0] - server_cpu - figures.client_cpu_seconds,
        ),
    )
    f = figures
    # The supervisor of `--workers N` only waits: its share is left out.
    cores = "+".join(f"{c:.2f}" for c in row.per_process_cores if c >= 0.005) or "0"
    print(
        f"  {system:14} {mode:6} c={concurrency:<4} {f.per_second:8.0f}/s  "
        f"p50 {f.p50_ms:7.1f} p99 {f.p99_ms:7.1f} max {f.max_ms:7.1f} ms  "
        f"server {row.server_us_per_call:6.0f} us/call  client cpu {f.client_cpu_seconds:5.1f}s  "
        f"rss {row.peak_rss_mib:5.0f} MiB  other cpu {row.other_cpu_seconds:4.1f}s  "
        f"server cores {cores}  waiting for a core {row.run_queue_wait:.2f}  "
        f"idle cores {row.idle_cores:.2f}  "
        f"ok {f.ok} errors {f.errors or 0}",
        flush=True,
    )
    return row


def versions() -> dict[str, str]:
    import cryptography
    import grpc
    import peewee

    out = {
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "cryptography": cryptography.__version__,
        "peewee": peewee.__version__,
        "openssl (cryptography)": __import__(
            "cryptography.hazmat.backends.openssl", fromlist=["backend"]
        ).backend.openssl_version_text(),
        "cfssl": cfssl_version(),
    }
    try:
        out["postgresql"] = subprocess.run(
            ["psql", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        pass
    return out


def machine() -> dict[str, str]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kib / 1024 / 1024:.0f} GiB",
        "kernel": platform.release(),
    }


def git_revision() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()


def fresh_postgres_url(name: str) -> str:
    import psycopg2

    admin = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 s runs, fewer CSRs")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--max-calls", type=int, default=24000, help="calls per run at most")
    parser.add_argument("--concurrency", default="32,128,512")
    parser.add_argument("--modes", default="reused,new")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--channels", type=int, default=8, help="reused mode: channels/process")
    parser.add_argument("--workers", type=int, default=None, help="serve --workers N")
    parser.add_argument("--database", default="sqlite", help="sqlite or postgresql")
    parser.add_argument("--no-cfssl", action="store_true")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra serve flag")
    parser.add_argument(
        "--server-src",
        type=Path,
        help="run the server from this src/ (e.g. `git archive HEAD src | tar -x -C DIR`)",
    )
    parser.add_argument("--label", default="", help="name of this run in the report")
    parser.add_argument("--json-out", type=Path, help="write all figures as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 2.0)
        args.max_calls = min(args.max_calls, 6000)
    levels = [int(x) for x in args.concurrency.split(",")]
    modes = args.modes.split(",")
    started = time.time()

    work = Path(tempfile.mkdtemp(prefix="sielum-bench-"))
    print(f"work dir {work}", flush=True)
    enroll_runs = len(levels) * len(modes)
    print(f"CSR pool: {enroll_runs * args.max_calls} distinct P-256 CSRs", flush=True)
    pool = csr_pool(enroll_runs * args.max_calls)

    print("crypto floor (one core, 2000 CSRs)", flush=True)
    floor_bare = crypto_floor.bare_cryptography(pool[:2000])
    floor_sielum = crypto_floor.sielum_ca(pool[:2000])
    print(f"  cryptography bare loop {floor_bare:.0f} us/CSR; sielum CA path {floor_sielum:.0f}")

    database_url = ""
    if args.database.startswith("postgres"):
        database_url = fresh_postgres_url("sielum_bench")
    sielum = start_sielum(
        work / "data",
        database_url=database_url,
        workers=args.workers,
        extra=tuple(args.serve_arg),
        server_src=args.server_src,
    )
    if args.workers and args.workers > 1:
        procstat.wait_for_children(sielum.pid, args.workers)
        time.sleep(1.0)
    token = sielum.create_token()
    cfssl = None if args.no_cfssl else start_cfssl(work / "cfssl")

    rows: list[Row] = []
    try:
        for index, (mode, level) in enumerate((m, c) for m in modes for c in levels):
            print(f"mode {mode}, concurrency {level}", flush=True)
            payloads = pool[index * args.max_calls : (index + 1) * args.max_calls]
            common = dict(mode=mode, concurrency=level, payloads=payloads, args=args)
            rows.append(
                measure(
                    "sielum-health",
                    "health",
                    target=sielum.enroll_target,
                    ca_pem=sielum.ca_pem,
                    server_pid=sielum.pid,
                    token="",
                    **common,  # type: ignore[arg-type]
                )
            )
            rows.append(
                measure(
                    "sielum-enroll",
                    "enroll",
                    target=sielum.enroll_target,
                    ca_pem=sielum.ca_pem,
                    server_pid=sielum.pid,
                    token=token,
                    **common,  # type: ignore[arg-type]
                )
            )
            if cfssl is not None:
                rows.append(
                    measure(
                        "cfssl",
                        "cfssl",
                        target=cfssl.target,
                        ca_pem=cfssl.ca_pem,
                        server_pid=cfssl.process.pid,
                        token="",
                        **common,  # type: ignore[arg-type]
                    )
                )
    finally:
        exit_code = sielum.stop()
        if cfssl is not None:
            cfssl.stop()
    print(f"sielum-server exit code after SIGTERM: {exit_code}")

    from sielum.store.store import Store

    store = Store.open(database_url or f"sqlite:///{work / 'data' / 'sielum.db'}")
    problems = store.check_integrity()
    enrolled_ok = sum(r.figures.ok for r in rows if r.system == "sielum-enroll")
    devices = _count_devices(store)
    store.close()
    print(f"integrity: {problems or 'ok'}; devices {devices}, successful enrollments {enrolled_ok}")

    report = {
        "label": args.label,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "revision": git_revision(),
        "machine": machine(),
        "versions": versions(),
        "settings": {
            "duration": args.duration,
            "max_calls": args.max_calls,
            "clients": args.clients,
            "channels_per_client": args.channels,
            "workers": args.workers,
            "database": args.database,
            "serve_args": args.serve_arg,
            "server_src": str(args.server_src or ""),
        },
        "crypto_floor_us": {"cryptography": floor_bare, "sielum_ca": floor_sielum},
        "rows": [asdict(r) for r in rows],
        "server_exit_code": exit_code,
        "integrity_problems": problems,
        "devices": devices,
        "successful_enrollments": enrolled_ok,
        "elapsed_seconds": time.time() - started,
    }
    print_table(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1, default=str))
        print(f"figures written to {args.json_out}")
    shutil.rmtree(work, ignore_errors=True)
    if database_url:
        fresh_postgres_url("sielum_bench")  # leaves an empty database, not gigabytes
    return 0


def _count_devices(store: Any) -> int:
    from sielum.store.database import execute

    with store.db.connection_context():
        return int(execute(store.db, "SELECT COUNT(*) FROM device").fetchone()[0])


def print_table(report: dict[str, Any]) -> None:
    """The markdown table RESULTS.md shows, with the ratios the issue asks for."""
    rows = report["rows"]
    by_key = {(r["system"], r["mode"], r["concurrency"]): r for r in rows}
    floor = report["crypto_floor_us"]["cryptography"]
    print()
    print(
        "| mode | conc | enroll/s | p50 ms | p99 ms | max ms | errors | server µs/enroll "
        "| peak RSS MiB (max/process) | client CPU s | other CPU s | ceiling Check/s "
        "| enroll÷ceiling "
        "| cfssl/s | cfssl µs/cert | µs ÷ cfssl µs | µs ÷ floor |"
    )
    print("|" + "---|" * 17)
    for r in rows:
        if r["system"] != "sielum-enroll":
            continue
        f = r["figures"]
        health = by_key.get(("sielum-health", r["mode"], r["concurrency"]))
        peer = by_key.get(("cfssl", r["mode"], r["concurrency"]))
        ceiling = health["figures"]["per_second"] if health else float("nan")
        peer_rate = peer["figures"]["per_second"] if peer else float("nan")
        peer_us = peer["server_us_per_call"] if peer else float("nan")
        errors = ", ".join(f"{k} {v}" for k, v in f["errors"].items()) or "0"
        print(
            f"| {r['mode']} | {r['concurrency']} | {f['per_second']:.0f} | {f['p50_ms']:.1f} "
            f"| {f['p99_ms']:.1f} | {f['max_ms']:.1f} | {errors} | {r['server_us_per_call']:.0f} "
            f"| {r['peak_rss_mib']:.0f} ({r['peak_rss_per_process_mib']:.0f}) "
            f"| {f['client_cpu_seconds']:.1f} | {r.get('other_cpu_seconds', float('nan')):.1f} "
            f"| {ceiling:.0f} | {f['per_second'] / ceiling:.2f} "
            f"| {peer_rate:.0f} | {peer_us:.0f} | {r['server_us_per_call'] / peer_us:.2f} "
            f"| {r['server_us_per_call'] / floor:.1f} |"
        )
    print()
    for r in rows:
        if r["system"] == "sielum-enroll":
            continue
        f = r["figures"]
        errors = ", ".join(f"{k} {v}" for k, v in f["errors"].items()) or "0"
        print(
            f"  {r['system']:14} {r['mode']:6} c={r['concurrency']:<4} {f['per_second']:.0f}/s "
            f"p50 {f['p50_ms']:.1f} p99 {f['p99_ms']:.1f} max {f['max_ms']:.1f} ms, "
            f"server {r['server_us_per_call']:.0f} µs/call, rss {r['peak_rss_mib']:.0f} MiB, "
            f"client cpu {f['client_cpu_seconds']:.1f} s, errors {errors}"
        )


if __name__ == "__main__":
    sys.exit(main())
