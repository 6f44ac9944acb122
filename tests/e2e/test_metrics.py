"""serve --metrics-addr: one /metrics over all workers, exact across kill -9, read by Prometheus."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sielum.admin.v1 import admin_pb2
from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from sielum.model import DeviceState, TokenState
from sielum.recorder import (
    CertificateKind,
    DashboardLoginResult,
    Decision,
    EnrollmentResult,
    PolicyRule,
)
from sielum.server import multiproc
from sielum.tokens import make_secret

from ..rpc.conftest import make_csr, make_key
from .conftest import (
    ServerProcess,
    free_port,
    init_data_dir,
    run,
    start_server,
)
from .test_workers import _admin, _fresh_enroll_channel, _log_events, _wait_for, _workers_ready

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "examples" / "prometheus"
DASHBOARD = ROOT / "examples" / "grafana" / "sielum.json"
SERVICES = {
    "sielum.enroll.v1.EnrollService",
    "sielum.admin.v1.AdminService",
    "sielum.agent.v1.AgentService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
    "unknown",
}
# Every label value the sielum_* metrics may carry: the recorder's enums and the states.
CLOSED_LABELS = {
    "result": {r.value for r in EnrollmentResult} | {r.value for r in DashboardLoginResult},
    "kind": {k.value for k in CertificateKind},
    "state": {s.value for s in TokenState} | {s.value for s in DeviceState},
    "rule": {r.value for r in PolicyRule},
    "decision": {d.value for d in Decision},
    "for": {"1h", "24h", "7d"},
    "version": {metadata.version("sielum")},
}


def scrape(port: int) -> tuple[str, list[Sample]]:
    """GET /metrics on a new connection (so the kernel may hand it to any worker)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return text, samples


def value(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def figures(samples: list[Sample]) -> dict[str, float]:
    """What must be exact: each enrollment result, and Enroll calls by status code."""
    out = {
        f"result={s.labels['result']}": s.value
        for s in samples
        if s.name == "sielum_enrollments_total" and s.value
    }
    for s in samples:
        if s.name == "grpc_server_handled_total" and s.labels["grpc_method"] == "Enroll":
            out[f"Enroll {s.labels['grpc_code']}"] = s.value
        if s.name == "sielum_certificates_issued_total" and s.value:
            out[f"issued {s.labels['kind']}"] = s.value
    return out


def cpu_and_memory(pid: int) -> tuple[float, int]:
    """(CPU seconds, resident bytes) of a process, from /proc as the server reads them."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


def children(pid: int) -> list[int]:
    """The processes whose parent is pid."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def promtool_accepts(text: str) -> None:
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def assert_no_identifying_label(samples: list[Sample], forbidden: set[str]) -> None:
    """No label value holds a token id, device id, hostname or address; sielum_* use closed sets."""
    assert forbidden
    for sample in samples:
        for key, label in sample.labels.items():
            assert not any(word in label for word in forbidden), (sample.name, key, label)
            if sample.name.startswith("sielum_"):
                assert label in CLOSED_LABELS[key], (sample.name, key, label)
            if key == "grpc_service":
                assert label in SERVICES, label


class Agents:
    """Enrolls over a new TCP connection per call, so the calls spread over the workers."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.device_ids: list[str] = []
        self.hostnames: list[str] = []

    def enroll(self, secret: str, key: ec.EllipticCurvePrivateKey | None = None) -> grpc.StatusCode:
        hostname = f"metrics-host-{len(self.hostnames)}.example.org"
        self.hostnames.append(hostname)
        channel = _fresh_enroll_channel(self.server)
        try:
            reply = enroll_pb2_grpc.EnrollServiceStub(channel).Enroll(
                enroll_pb2.EnrollRequest(
                    token=secret, csr_pem=make_csr(key or make_key()), hostname=hostname
                ),
                timeout=30,
            )
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined, no-any-return]
        finally:
            channel.close()
        self.device_ids.append(reply.device_id)
        return grpc.StatusCode.OK


def _worker_enrollments(run_directory: Path) -> dict[int, float]:
    """Enroll results each process counted, from its own file (counter_<pid>.db)."""
    counted = {}
    for path in run_directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        metrics = MultiProcessCollector.merge([str(path)], accumulate=False)
        counted[pid] = sum(
            s.value for m in metrics for s in m.samples if s.name == "sielum_enrollments_total"
        )
    return counted


def test_two_workers_count_every_call_once_even_across_kill_9(
    tmp_path: Path, server_factory: list[ServerProcess]
) -> None:
    base = tmp_path / "multiproc"
    base.mkdir()
    server = start_server(
        init_data_dir(tmp_path),
        "--workers", "2", "--log-format", "json", "--enroll-failure-burst", "0",
        env={multiproc.ENV: str(base)},
    )  # fmt: skip
    server_factory.append(server)
    workers = _workers_ready(server)
    (run_directory,) = base.iterdir()
    admin = _admin(server)
    fleet = admin.CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(label="fleet"), timeout=10
    )
    single = admin.CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(label="single", max_uses=1), timeout=10
    )
    agents = Agents(server)
    key = make_key()
    codes = collections.Counter(
        [agents.enroll(fleet.secret, key)]
        + [agents.enroll(fleet.secret) for _ in range(11)]
        + [agents.enroll(fleet.secret, key)]  # the same agent again
        + [agents.enroll(single.secret) for _ in range(3)]
        + [agents.enroll(make_secret(fleet.token.id).reveal()) for _ in range(5)]
    )
    assert codes == {
        grpc.StatusCode.OK: 14,
        grpc.StatusCode.PERMISSION_DENIED: 2,
        grpc.StatusCode.UNAUTHENTICATED: 5,
    }
    expected = {
        "result=ok": 13,
        "result=retried": 1,
        "result=exhausted": 2,
        "result=invalid_token": 5,
        "Enroll OK": 14,
        "Enroll PermissionDenied": 2,
        "Enroll Unauthenticated": 5,
        "issued device": 13,
    }
    # Both workers took calls (all on one by chance: 1 in 2**20), and each counted its own.
    per_worker = _worker_enrollments(run_directory)
    assert set(per_worker) == set(workers) and all(per_worker.values()), per_worker
    assert sum(per_worker.values()) == 21

    # Whichever worker answers a scrape, it shows the sum of both, each call once.
    for _ in range(6):
        text, samples = scrape(server.metrics_port)
        assert figures(samples) == expected
    promtool_accepts(text)
    assert value(samples, "sielum_tokens", state="active") == 1
    assert value(samples, "sielum_tokens", state="exhausted") == 1
    assert value(samples, "sielum_devices", state="active") == 13
    forbidden = {
        fleet.token.id,
        single.token.id,
        *agents.device_ids,
        *agents.hostnames,
        "127.0.0.1",
        "localhost",
        "ipv4",
    }
    assert_no_identifying_label(samples, forbidden)

    # Memory and CPU are the workers' summed (the multiprocess mode leaves them out).
    read = [cpu_and_memory(pid) for pid in workers]
    _, samples = scrape(server.metrics_port)
    resident = value(samples, "process_resident_memory_bytes")
    assert 0.7 * sum(m for _, m in read) < resident < 1.3 * sum(m for _, m in read), read
    cpu_before = value(samples, "process_cpu_seconds_total")
    assert cpu_before >= sum(c for c, _ in read) > 0, read

    # A worker killed outright loses none of its counts, and its successor adds to them.
    os.kill(workers[0], signal.SIGKILL)
    _wait_for(lambda: len(_log_events(server, "serving")) == 3)
    # The dead worker's CPU stays in the sum (as noted at the last scrape before it went).
    [successor] = [pid for pid in children(server.process.pid) if pid not in workers]
    successor_cpu, _ = cpu_and_memory(successor)
    _, samples = scrape(server.metrics_port)
    assert value(samples, "process_cpu_seconds_total") >= cpu_before + successor_cpu
    live = [cpu_and_memory(pid)[1] for pid in (workers[1], successor)]
    resident = value(samples, "process_resident_memory_bytes")
    assert 0.7 * sum(live) < resident < 1.3 * sum(live), (resident, live)
    for _ in range(4):
        assert figures(scrape(server.metrics_port)[1]) == expected
    codes = collections.Counter(agents.enroll(fleet.secret) for _ in range(6))
    assert codes == {grpc.StatusCode.OK: 6}
    expected |= {"result=ok": 19, "Enroll OK": 20, "issued device": 19}
    for _ in range(4):
        text, samples = scrape(server.metrics_port)
        assert figures(samples) == expected
    promtool_accepts(text)
    assert_no_identifying_label(samples, forbidden | set(agents.device_ids))
    assert len(list(run_directory.glob("counter_*.db"))) == 3  # the dead worker's stays

    assert server.stop(signal.SIGTERM) == 0
    assert not run_directory.exists()


def test_a_new_run_starts_from_zero(tmp_path: Path, server_factory: list[ServerProcess]) -> None:
    """A run killed outright leaves its files; the next run neither counts them nor keeps them."""
    base = tmp_path / "multiproc"
    base.mkdir()
    data_dir = init_data_dir(tmp_path)
    first = start_server(data_dir, "--workers", "1", env={multiproc.ENV: str(base)})
    server_factory.append(first)
    secret = _admin(first).CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(label="fleet"), timeout=10
    )
    agents = Agents(first)
    assert [agents.enroll(secret.secret) for _ in range(2)] == [grpc.StatusCode.OK] * 2
    assert value(scrape(first.metrics_port)[1], "sielum_enrollments_total", result="ok") == 2
    (stale,) = base.iterdir()
    first.stop(signal.SIGKILL)
    assert stale.exists()

    second = start_server(data_dir, "--workers", "1", env={multiproc.ENV: str(base)})
    server_factory.append(second)
    samples = scrape(second.metrics_port)[1]
    assert value(samples, "sielum_enrollments_total") == 0
    assert value(samples, "sielum_certificates_issued_total") == 0
    assert value(samples, "sielum_devices", state="active") == 2  # from the database
    assert not stale.exists()
    assert len(list(base.iterdir())) == 1
    assert second.stop() == 0
    assert list(base.iterdir()) == []


def test_a_metrics_address_in_use_or_malformed_is_refused(tmp_path: Path) -> None:
    data_dir = init_data_dir(tmp_path)
    # Every other listener off: a default port (8445, 8446) may be another test's now.
    common = ["serve", "--data-dir", str(data_dir), "--enroll-addr", "127.0.0.1:0",
              "--api-addr", "127.0.0.1:0", "--dashboard-addr", "off",
              "--revocation-addr", "off"]  # fmt: skip
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        for workers in ("1", "2"):
            result = run(
                "sielum-server", *common, "--metrics-addr", address, "--workers", workers,
                env={multiproc.ENV: str(tmp_path)},
            )  # fmt: skip
            assert result.returncode == 1, result.stderr
            assert f"cannot listen on {address}: Address already in use" in result.stderr
    result = run("sielum-server", *common, "--metrics-addr", "9464")
    assert result.returncode == 2
    assert "--metrics-addr must be HOST:PORT or off" in result.stderr
    # Nothing left behind by the refused runs.
    assert not list(tmp_path.glob(f"{multiproc.PREFIX}*"))


def test_alert_rules_are_valid_and_fire_when_they_should() -> None:
    for command in (
        ["promtool", "check", "rules", "alerts.yml"],
        ["promtool", "test", "rules", "alerts_test.yml"],
        ["promtool", "check", "config", "prometheus.yml"],
    ):
        checked = subprocess.run(command, cwd=ALERTS, capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return [q.replace("$__rate_interval", "1m").replace("$job", "sielum") for q in queries]


@pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus is not installed (Debian package prometheus; scripts/test-packages.txt)",
)
def test_prometheus_scrapes_both_workers_and_answers_promql(
    tmp_path: Path, server_factory: list[ServerProcess]
) -> None:
    server = start_server(init_data_dir(tmp_path), "--workers", "2", "--enroll-failure-burst", "0")
    server_factory.append(server)
    fleet = _admin(server).CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(label="fleet"), timeout=10
    )
    agents = Agents(server)
    codes = [agents.enroll(fleet.secret) for _ in range(5)]
    codes += [agents.enroll(make_secret(fleet.token.id).reveal()) for _ in range(3)]
    assert collections.Counter(codes) == {
        grpc.StatusCode.OK: 5,
        grpc.StatusCode.UNAUTHENTICATED: 3,
    }

    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "sielum",
                "static_configs": [{"targets": [f"127.0.0.1:{server.metrics_port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp_path / "prometheus.log").open("w") as log:
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def api(path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            answer = json.loads(reply.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def scalar(query: str) -> float | None:
        try:
            result = api("query", query=query)["result"]
        except OSError:  # not listening yet
            return None
        return float(result[0]["value"][1]) if result else None

    try:
        _wait_for(lambda: scalar('sum(sielum_enrollments_total{result="ok"})') == 5, timeout=120)
        assert scalar('sum(sielum_enrollments_total{result="invalid_token"})') == 3
        assert scalar('sum(grpc_server_handled_total{grpc_method="Enroll"})') == 8
        assert scalar('up{job="sielum"}') == 1
        assert scalar('max(sielum_devices{state="active"})') == 5
        # Every query of the Grafana dashboard is valid PromQL with data behind it (rate()
        # needs two scrapes in its window).
        for query in _dashboard_queries():
            _wait_for(lambda query=query: api("query", query=query)["result"], timeout=30)
        # The alert rules load, evaluate, and none fires on a healthy server.
        names = {
            rule["alert"]
            for group in yaml.safe_load((ALERTS / "alerts.yml").read_text())["groups"]
            for rule in group["rules"]
        }

        def evaluated() -> list[dict[str, Any]]:
            groups = api("rules", type="alert")["groups"]
            return [rule for group in groups for rule in group["rules"]]

        _wait_for(lambda: all(r["health"] == "ok" for r in evaluated()) and evaluated(), 60)
        assert {r["name"] for r in evaluated()} == names
        assert all(r["state"] == "inactive" for r in evaluated())
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
