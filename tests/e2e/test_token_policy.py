"""Token policy and approval with the real console scripts: each rule against sielum-agent,
approval and denial from sielum-admin while the agent waits, and the metrics they leave."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from sielum.tokens import make_secret

from .conftest import (
    ServerProcess,
    admin,
    admin_json,
    agent,
    ca_fingerprint,
    create_token,
    init_data_dir,
    script,
    start_server,
    token_uses,
)
from .test_metrics import promtool_accepts

_PENDING = re.compile(r"enrollment is waiting for approval: request ([0-9a-f-]{36})")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The enroll port on "::": IPv4 clients arrive as ::ffff:a.b.c.d, IPv6 ones as
    # themselves, so one server judges networks of both families.
    process = start_server(
        init_data_dir(tmp_path_factory.mktemp("policy")),
        "--enroll-failure-burst",
        "0",
        enroll_host="::",
    )
    yield process
    process.stop()


def _enroll_argv(server: ServerProcess, cert_dir: Path, *extra: str, host: str) -> list[str]:
    return [
        script("sielum-agent"),
        "enroll",
        "--server",
        f"https://{host}:{server.enroll_port}",
        "--ca-fingerprint",
        ca_fingerprint(server.data_dir),
        "--cert-dir",
        str(cert_dir),
        *extra,
    ]


def _enroll(
    server: ServerProcess, secret: str, cert_dir: Path, *extra: str, host: str = "127.0.0.1"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _enroll_argv(server, cert_dir, *extra, host=host),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SIELUM_ENROLLMENT_TOKEN": secret},
        check=False,
    )


REFUSALS = [
    (
        ("--allow-network", "10.0.0.0/8", "--allow-network", "2001:db8::/32"),
        (),
        "127.0.0.1",
        "token policy: the address 127.0.0.1 is not in the allowed networks "
        "(10.0.0.0/8, 2001:db8::/32)",
    ),
    (
        ("--allow-network", "127.0.0.0/8"),
        (),
        "[::1]",
        "token policy: the address ::1 is not in the allowed networks (127.0.0.0/8)",
    ),
    (
        ("--hostname-pattern", "web-*"),
        ("--hostname", "db-1"),
        "127.0.0.1",
        "token policy: hostname 'db-1' does not match 'web-*'",
    ),
    (
        ("--require-fact", "role=web*"),
        (),
        "127.0.0.1",
        "token policy: fact 'role' is required",
    ),
    (
        ("--require-fact", "role=web*", "--require-fact", "os=linux"),
        ("--fact", "role=db"),
        "127.0.0.1",
        "token policy: fact 'role' does not match 'web*'",
    ),
]


@pytest.mark.parametrize(
    ("policy", "agent_args", "host", "message"),
    REFUSALS,
    ids=["network-v4", "network-v6", "hostname", "fact-missing", "fact-mismatch"],
)
def test_fail_each_rule_refuses_with_its_name_and_spends_no_use(
    server: ServerProcess,
    tmp_path: Path,
    policy: tuple[str, ...],
    agent_args: tuple[str, ...],
    host: str,
    message: str,
) -> None:
    token_id, secret = create_token(server, "--max-uses", "1", *policy)
    result = _enroll(server, secret, tmp_path / "agent", *agent_args, host=host)
    assert result.returncode == 4, result.stderr
    assert result.stderr.strip() == f"sielum-agent: token refused: {message}"
    # No use spent (and so no device: check_integrity holds uses to devices).
    assert token_uses(server, token_id) == 0


def test_fail_a_caller_without_the_secret_learns_nothing_of_the_policy(
    server: ServerProcess, tmp_path: Path
) -> None:
    token_id, _ = create_token(server, "--hostname-pattern", "web-*", "--approval", "manual")
    wrong = make_secret(token_id).reveal()
    result = _enroll(server, wrong, tmp_path / "guess", "--hostname", "db-1")
    assert result.returncode == 4, result.stderr
    assert result.stderr.strip() == "sielum-agent: token refused: enrollment token is invalid"
    requests = admin_json(server, "requests", "list")["requests"]
    assert token_id not in [r["tokenId"] for r in requests]  # type: ignore[index, union-attr]


def test_ok_an_agent_within_every_rule_enrolls_with_the_tokens_tags(
    server: ServerProcess, tmp_path: Path
) -> None:
    token_id, secret = create_token(
        server,
        *("--allow-network", "127.0.0.0/8", "--allow-network", "::1/128"),
        *("--hostname-pattern", "web-*", "--require-fact", "role=web*"),
        *("--tag", "web", "--tag", "eu-west.1"),
    )
    shown = admin_json(server, "tokens", "get", token_id)["token"]
    assert shown["tags"] == ["eu-west.1", "web"]  # type: ignore[index]
    assert shown["allowedNetworks"] == ["127.0.0.0/8", "::1/128"]  # type: ignore[index]
    assert shown["hostnamePattern"] == "web-*"  # type: ignore[index]
    assert shown["requiredFacts"] == {"role": "web*"}  # type: ignore[index]
    text = admin(server, "tokens", "get", token_id).stdout
    assert re.search(r"^tags +eu-west\.1, web$", text, re.M), text
    assert re.search(r"^required fact role +web\*$", text, re.M), text
    created = admin_json(server, "audit", "list", "--resource", f"token/{token_id}")
    detail = created["events"][0]["detail"]  # type: ignore[index]
    assert detail == (
        "max_uses=unlimited expires_at=never tags=eu-west.1,web networks=127.0.0.0/8,::1/128 "
        "hostname=web-* fact:role=web*"
    )

    devices = []
    for n, host in enumerate(("127.0.0.1", "[::1]")):
        cert_dir = tmp_path / f"web-{n}"
        result = _enroll(
            server, secret, cert_dir, "--hostname", f"web-{n}", "--fact", "role=webserver",
            host=host,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        device_id = json.loads((cert_dir / "agent.json").read_text())["device_id"]
        devices.append(device_id)
        certificate = x509.load_pem_x509_certificate((cert_dir / "device.pem").read_bytes())
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"sielum://device/{device_id}",
            "sielum://tag/eu-west.1",
            "sielum://tag/web",
        ]
        verified = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(cert_dir / "ca.pem"),
                str(cert_dir / "device.pem"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verified.returncode == 0, verified.stderr
        # The device calls the API with its tagged certificate as with any other.
        assert agent("status", "--cert-dir", str(cert_dir)).returncode == 0
    tagged = admin_json(server, "devices", "list", "--tag", "web")["devices"]
    assert sorted(d["id"] for d in tagged) == sorted(devices)  # type: ignore[index, union-attr]
    assert {tuple(d["tags"]) for d in tagged} == {("eu-west.1", "web")}  # type: ignore[index, union-attr]
    assert admin_json(server, "devices", "list", "--tag", "eu")["devices"] == []
    bad = admin(server, "devices", "list", "--tag", "Web!")
    assert bad.returncode == 2, bad.stderr
    assert "tag 'Web!' is invalid" in bad.stderr


def test_fail_a_bad_policy_is_refused_and_makes_no_token(server: ServerProcess) -> None:
    before = admin_json(server, "tokens", "list")["tokens"]
    for flags, message in (
        (("--allow-network", "10.0.0.0/33"), "allowed network '10.0.0.0/33' is not a CIDR"),
        (("--tag", "Web"), "tag 'Web' is invalid"),
        (("--ephemeral-after", "10s"), "ephemeral_after must be between 1 minute and 365 days"),
        (("--require-fact", "bad name=x"), "required fact name 'bad name' is invalid"),
    ):
        result = admin(server, "tokens", "create", "--label", "bad", *flags)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr, result.stderr
    assert admin_json(server, "tokens", "list")["tokens"] == before


class WaitingAgent:
    """sielum-agent enroll running in the background; its stderr read line by line."""

    def __init__(self, server: ServerProcess, secret: str, cert_dir: Path, hostname: str) -> None:
        self.process = subprocess.Popen(
            _enroll_argv(server, cert_dir, "--hostname", hostname, host="127.0.0.1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "SIELUM_ENROLLMENT_TOKEN": secret},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def request_id(self) -> str:
        while True:
            line = self.lines.get(timeout=60)
            self.stderr.append(line)
            match = _PENDING.search(line)
            if match:
                return match.group(1)

    def finish(self) -> tuple[int, str, str]:
        out, _ = self.process.communicate(timeout=120)
        while not self.lines.empty():
            self.stderr.append(self.lines.get())
        return self.process.returncode, out, "".join(self.stderr)


def test_approval_from_the_cli_and_at_most_max_uses(server: ServerProcess, tmp_path: Path) -> None:
    token_id, secret = create_token(server, "--approval", "manual", "--max-uses", "1")
    first = WaitingAgent(server, secret, tmp_path / "first", "first-host")
    request_id = first.request_id()
    # A second machine waits on the same token, which has one use.
    second = WaitingAgent(server, secret, tmp_path / "second", "second-host")
    second_id = second.request_id()
    how = first.lines.get(timeout=30)  # the line after the id: how to approve it
    assert how.strip() == f"an admin approves it with: sielum-admin requests approve {request_id}"
    pending = admin_json(server, "requests", "list", "--state", "pending")["requests"]
    hosts = {r["id"]: r["hostname"] for r in pending}  # type: ignore[index, union-attr]
    assert hosts == {request_id: "first-host", second_id: "second-host"}, pending
    assert token_uses(server, token_id) == 0  # waiting consumes nothing

    approved = admin(server, "requests", "approve", request_id)
    assert approved.returncode == 0, approved.stderr
    assert f"approved request {request_id}" in approved.stdout
    code, out, err = first.finish()
    assert code == 0, err
    assert "enrolled as device" in out
    device_id = json.loads((tmp_path / "first" / "agent.json").read_text())["device_id"]
    assert device_id in approved.stdout
    assert token_uses(server, token_id) == 1
    decided = admin_json(server, "requests", "list", "--state", "approved")["requests"]
    assert [r["decidedBy"] for r in decided if r["id"] == request_id] == ["admin/admin"]  # type: ignore[index, union-attr]

    # Deciding again changes nothing: one decision per request.
    again = admin(server, "requests", "deny", request_id)
    assert again.returncode == 1, again.stderr
    assert "enrollment request was approved already" in again.stderr

    # The token's one use is spent: the second approval is refused, and the waiting
    # agent then hears that its token is exhausted.
    refused = admin(server, "requests", "approve", second_id)
    assert refused.returncode == 1, refused.stderr
    assert "enrollment token is exhausted: the request can no longer be approved" in refused.stderr
    code, _, err = second.finish()
    assert code == 4, err
    assert "token refused: enrollment token is exhausted" in err
    assert token_uses(server, token_id) == 1
    assert len(admin_json(server, "devices", "list", "--token", token_id)["devices"]) == 1  # type: ignore[arg-type]
    expired = admin_json(server, "requests", "list", "--state", "expired")["requests"]
    assert second_id in [r["id"] for r in expired]  # type: ignore[index, union-attr]

    actions = [
        e["action"]  # type: ignore[index]
        for e in admin_json(server, "audit", "list", "--resource", f"request/{request_id}")[
            "events"
        ]  # type: ignore[union-attr]
    ]
    assert actions == ["request.approve", "request.create"]


def test_denial_from_the_cli_stops_the_agent_with_exit_4(
    server: ServerProcess, tmp_path: Path
) -> None:
    token_id, secret = create_token(server, "--approval", "manual")
    waiting = WaitingAgent(server, secret, tmp_path / "agent", "denied-host")
    request_id = waiting.request_id()
    denied = admin(server, "requests", "deny", request_id)
    assert denied.returncode == 0, denied.stderr
    code, out, err = waiting.finish()
    assert code == 4, err
    assert err.strip().splitlines()[-1] == "sielum-agent: enrollment denied"
    assert out == ""
    assert not (tmp_path / "agent" / "device.pem").exists()
    assert token_uses(server, token_id) == 0
    # The denied key is dropped: run again, the machine would ask anew with a new key.
    assert not (tmp_path / "agent" / "enroll.key.pending").exists()
    # Denied for good, whoever asks with that key: the request stays decided.
    denied_list = admin_json(server, "requests", "list", "--state", "denied")["requests"]
    assert request_id in [r["id"] for r in denied_list]  # type: ignore[index, union-attr]


def test_metrics_count_refusals_by_rule_and_decisions(server: ServerProcess) -> None:
    """After the tests above (module order): refusals by rule and decisions, promtool-clean."""
    with urllib.request.urlopen(
        f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10
    ) as reply:
        text = reply.read().decode()
    promtool_accepts(text)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("sielum_policy_refusals_total", (("rule", "network"),))] == 2
    assert samples[("sielum_policy_refusals_total", (("rule", "hostname"),))] == 1
    assert samples[("sielum_policy_refusals_total", (("rule", "fact"),))] == 2
    assert samples[("sielum_enrollment_decisions_total", (("decision", "approved"),))] == 1
    assert samples[("sielum_enrollment_decisions_total", (("decision", "denied"),))] == 1
    assert samples[("sielum_enrollments_total", (("result", "policy"),))] == 5
    assert samples[("sielum_enrollments_total", (("result", "denied"),))] >= 2
    assert samples[("sielum_enrollment_requests_pending", ())] == 0
