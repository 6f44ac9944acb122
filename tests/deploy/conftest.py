"""Deployment test helpers: the agent's package, host roots, a server, a /proc watch."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ca_fingerprint, script
from tests.package.conftest import Artifacts, built  # noqa: F401 - the fixture, built once per run
from tests.robust.conftest import Serve, make_data_dir

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
UNIT = EXAMPLES / "systemd" / "sielum-agent.service"


def host_root(root: Path) -> Path:
    """An empty host's root file system, as far as dpkg and systemctl --root need one.

    /etc, systemd's unit directory, /usr/local/bin, /var/cache, and a dpkg database
    that holds what the agent's package depends on (the lines of libc6 and zlib1g from
    this machine's own status file, as on any Debian host); dpkg installs into it with
    --root.
    """
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    (root / "usr" / "local" / "bin").mkdir(parents=True)
    (root / "var" / "cache").mkdir(parents=True)
    admin = root / "var" / "lib" / "dpkg"
    for name in ("info", "updates", "triggers"):
        (admin / name).mkdir(parents=True)
    stanzas = Path("/var/lib/dpkg/status").read_text().split("\n\n")
    kept = [s for s in stanzas if re.match(r"Package: (libc6|zlib1g)\n", s)]
    assert len(kept) == 2, "this machine's dpkg knows no libc6 or zlib1g"
    (admin / "status").write_text("\n\n".join(kept).strip() + "\n")
    for stanza in kept:
        package = re.match(r"Package: (\S+)", stanza)
        arch = re.search(r"^Architecture: (\S+)", stanza, re.MULTILINE)
        assert package and arch
        (admin / "info" / f"{package[1]}:{arch[1]}.list").write_text("")
    return root


def installed_version(root: Path) -> str:
    """dpkg's word on sielum-agent in a host root: "ii 0.1.0", or "" when it has none."""
    result = subprocess.run(
        ["dpkg-query", f"--root={root}", "-W", "-f=${db:Status-Abbrev}${Version}", "sielum-agent"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def newer_deb(built: Artifacts, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The built .deb again, as version <version>.1: an upgrade, without a second build."""
    base = tmp_path_factory.mktemp("newer-deb")
    tree = base / "tree"
    subprocess.run(["dpkg-deb", "--raw-extract", str(built.deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    version = f"{built.version}.1"
    control.write_text(
        re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.MULTILINE)
    )
    out = base / f"sielum-agent_{version}_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(tree), str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture
def package_server(built: Artifacts) -> Iterator[str]:  # noqa: F811
    """dist/ over HTTP on a loopback port, as a web server publishing the packages would."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(built.executable.parent)
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Serve]:
    """A real `sielum-server serve` on two free loopback ports, SQLite in a temp dir."""
    serve = Serve(make_data_dir(tmp_path / "server"))
    serve.start()
    yield serve
    serve.kill()


def enroll_url(serve: Serve) -> str:
    return f"https://127.0.0.1:{serve.enroll_port}"


def fingerprint(serve: Serve) -> str:
    return ca_fingerprint(serve.data_dir)


def admin_args(serve: Serve) -> list[str]:
    return [
        script("sielum-admin"),
        "--server",
        f"127.0.0.1:{serve.api_port}",
        "--cert-dir",
        str(serve.data_dir / "admin"),
    ]


def admin_json(serve: Serve, *args: str) -> Any:
    result = subprocess.run(
        [*admin_args(serve), "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def create_token(serve: Serve, max_uses: int, label: str = "rollout") -> tuple[str, str]:
    """(token id, secret)."""
    created = admin_json(serve, "tokens", "create", "--label", label, "--max-uses", str(max_uses))
    return created["token"]["id"], created["secret"]


def token(serve: Serve, token_id: str) -> dict[str, Any]:
    result: dict[str, Any] = admin_json(serve, "tokens", "get", token_id)["token"]
    return result


def token_uses(serve: Serve, token_id: str) -> int:
    return int(token(serve, token_id)["uses"])


def devices(serve: Serve, token_id: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = admin_json(serve, "devices", "list", "--token", token_id)[
        "devices"
    ]
    return result


def needles(secret: str) -> dict[str, bytes]:
    """What must never be seen: the secret and its random part alone."""
    return {"secret": secret.encode(), "random part": secret.rsplit("_", 1)[1][:32].encode()}


def leaks(secret: str, **texts: str | bytes) -> list[str]:
    """Names of the texts that carry the secret or its random part."""
    found = []
    for name, text in texts.items():
        data = text.encode() if isinstance(text, str) else text
        found += [f"{what} in {name}" for what, n in needles(secret).items() if n in data]
    return found


def files_with(secret: str, root: Path) -> list[str]:
    """Every file under root that holds the secret or its random part."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                if leaks(secret, file=path.read_bytes()):
                    found.append(str(path))
    return found


@dataclass
class ProcWatch:
    """Samples /proc/<pid>/cmdline and environ of a process tree while a run goes on.

    A background thread walks the tree under `root` every few milliseconds and
    records any process whose argv or environment holds a needle. `seen` keeps each
    sampled command line, so a test can show that the watch did see the processes
    that mattered.
    """

    root: int
    needles: dict[str, bytes]
    interval: float = 0.02
    seen: set[str] = field(default_factory=set)
    # (what, "argv" or "environment", pid)
    found: list[tuple[str, str, int]] = field(default_factory=list)
    # pid -> every command line sampled for it (a process may exec, or be exiting)
    commands: dict[int, set[str]] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ProcWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> None:
        for pid in self._tree():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                self.samples += 1
                line = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
                self.seen.add(line)
                self.commands.setdefault(pid, set()).add(line)
                for what, needle in self.needles.items():
                    if needle in cmdline:
                        self.found.append((what, "argv", pid))
                    if needle in environ:
                        self.found.append((what, "environment", pid))

    def _tree(self) -> list[int]:
        """root and its descendants, through /proc/PID/task/TID/children."""
        pids, queue = [], [self.root]
        while queue:
            pid = queue.pop()
            pids.append(pid)
            with contextlib.suppress(OSError):
                for task in os.scandir(f"/proc/{pid}/task"):
                    with contextlib.suppress(OSError):
                        queue += [int(c) for c in Path(task.path, "children").read_text().split()]
        return pids

    def saw(self, fragment: str) -> bool:
        return any(fragment in line for line in self.seen)

    def leaks(self, kind: str | None = None) -> list[str]:
        """Each leak found, as "what in argv|environment of: command lines"."""
        return [
            f"{what} in {where} of: {sorted(self.commands.get(pid, ()))}"
            for what, where, pid in self.found
            if kind is None or where == kind
        ]

    def leaking_commands(self) -> list[set[str]]:
        """The command lines of each process in which a needle was found."""
        return [self.commands.get(pid, set()) for _, _, pid in self.found]


def watched_run(
    argv: list[str], secret: str, *, env: dict[str, str] | None = None, timeout: float = 600
) -> tuple[subprocess.CompletedProcess[str], ProcWatch]:
    """Runs argv to completion while a ProcWatch samples its process tree."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    try:
        return _watched_run(argv, secret, env=env, timeout=timeout)
    finally:
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        print(f"CPU {cpu:.1f}s wall {time.monotonic() - started:.1f}s: {' '.join(argv)[-80:]}")


def _watched_run(
    argv: list[str], secret: str, *, env: dict[str, str] | None = None, timeout: float = 600
) -> tuple[subprocess.CompletedProcess[str], ProcWatch]:
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as process:
        with ProcWatch(process.pid, needles(secret)) as watch:
            try:
                out, err = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
                raise AssertionError(f"{argv[0]} timed out\n{out[-5000:]}\n{err[-5000:]}") from None
        return subprocess.CompletedProcess(argv, process.returncode, out, err), watch
