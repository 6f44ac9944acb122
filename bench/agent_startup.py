"""Start-up of `sielum-agent --version`: the one-file executable against the venv's script.

Runs each program `--runs` times, alternating, so that whatever else the machine does
falls on all alike; prints wall time and CPU (user + system of the process and its
children: the onefile bootloader's parent and the Python child) per run. A benchmark,
not a test: nothing is asserted. Build first: `bash scripts/build-agent.sh`.

    .venv/bin/python bench/agent_startup.py [--runs 20] [--extra NAME=PATH ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(command: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `--version`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--extra", action="append", default=[], metavar="NAME=PATH", help="another program"
    )
    args = parser.parse_args()
    programs = {
        "onefile (dist/sielum-agent)": ([str(ROOT / "dist" / "sielum-agent")], {}),
        "onefile, TMPDIR=/dev/shm": ([str(ROOT / "dist" / "sielum-agent")], {"TMPDIR": "/dev/shm"}),
        "venv (.venv/bin/sielum-agent)": ([str(Path(sys.executable).parent / "sielum-agent")], {}),
    }
    for extra in args.extra:
        name, _, path = extra.partition("=")
        programs[name] = ([path], {})
    figures: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in programs}
    with tempfile.TemporaryDirectory() as cwd:
        for name, (command, env) in programs.items():  # one warm-up run each, not counted
            one_run([*command, "--version"], env, cwd)
        for _ in range(args.runs):
            for name, (command, env) in programs.items():
                wall, cpu = one_run([*command, "--version"], env, cwd)
                figures[name]["wall"].append(wall)
                figures[name]["cpu"].append(cpu)
    load = os.getloadavg()[0]
    print(f"sielum-agent --version, {args.runs} warm runs each, load average {load:.1f}")
    print(f"{'program':34} {'wall median':>12} {'wall min':>9} {'wall max':>9} {'CPU median':>11}")
    for name, values in figures.items():
        wall, cpu = values["wall"], values["cpu"]
        print(
            f"{name:34} {statistics.median(wall):11.3f}s {min(wall):8.3f}s {max(wall):8.3f}s"
            f" {statistics.median(cpu):10.3f}s"
        )
    size = (ROOT / "dist" / "sielum-agent").stat().st_size
    print(f"dist/sielum-agent: {size} bytes ({size / 1e6:.1f} MB)")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "agent-startup.json").write_text(json.dumps({"load": load, "figures": figures}))


if __name__ == "__main__":
    main()
