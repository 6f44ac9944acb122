"""Profiles a server under Enroll load with py-spy and prints where its time goes."""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procstat
from csrpool import csr_pool
from loadgen import LoadSpec, run_load, split
from sielum_proc import start_sielum


def summarize(raw: Path, top: int) -> None:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith("process"):
            frames = frames[1:]
        if frames and frames[0].startswith("thread"):
            frames = frames[1:]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
    print(f"{total} samples")
    print("-- inclusive --")
    for frame, count in inclusive.most_common(top):
        print(f"{100 * count / total:5.1f}%  {frame}")
    print("-- self --")
    for frame, count in own.most_common(top):
        print(f"{100 * count / total:5.1f}%  {frame}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--mode", default="reused")
    parser.add_argument("--kind", default="enroll", choices=("enroll", "health"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--native", action="store_true", help="py-spy --native")
    parser.add_argument("--gil", action="store_true", help="py-spy --gil: only the GIL holder")
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--serve-arg", action="append", default=[])
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    work = Path(tempfile.mkdtemp(prefix="sielum-profile-"))
    calls = 30000
    pool = csr_pool(calls)
    server = start_sielum(work / "data", workers=args.workers, extra=tuple(args.serve_arg))
    try:
        token = server.create_token()
        pids = procstat.tree(server.pid)
        target = pids[-1]  # with workers, one of them
        raw = work / "profile.txt"
        spy: list[subprocess.Popen[bytes]] = []

        def on_start() -> None:
            command = [
                py_spy,
                "record",
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                str(raw),
                "-p",
                str(target),
            ]
            command += ["-d", str(int(args.duration))]
            # --native needs the process paused while py-spy unwinds its C stacks.
            command.append("--native" if args.native else "--nonblocking")
            if args.gil:
                command.append("--gil")
            spy.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            time.sleep(0.5)

        specs = [
            LoadSpec(
                kind=args.kind,
                mode=args.mode,
                target=server.enroll_target,
                ca_pem=server.ca_pem,
                concurrency=share,
                duration=args.duration,
                max_calls=n,
                payloads=tuple(pool[i * (calls // 2) : (i + 1) * (calls // 2)]),
                token=token,
            )
            for i, (share, n) in enumerate(
                zip(split(args.concurrency, 2), split(calls, 2), strict=True)
            )
        ]
        figures = run_load(specs, on_start)
        print(f"{figures.per_second:.0f}/s p50 {figures.p50_ms:.1f} ms p99 {figures.p99_ms:.1f} ms")
        spy[0].wait(60)
        summarize(raw, args.top)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
