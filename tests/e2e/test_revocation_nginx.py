"""A real nginx trusts Sielum's devices through the revocation port: OCSP, then a CRL.

One server, three devices enrolled with the real agent: one current, one revoked by an
admin, one whose certificate a renewal superseded. nginx (examples/nginx/, run as a
subprocess on a loopback port with its own prefix) lets the current one in and refuses
the others, first asking /ocsp, then with the CRL that examples/nginx/refresh-crl.sh
fetched from /crl; `openssl ocsp` and `openssl verify -crl_check` agree with it.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from .conftest import (
    ServerProcess,
    admin,
    agent,
    agent_enroll,
    create_token,
    free_port,
    init_data_dir,
    start_server,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "nginx"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# DESIGN: a change appears in /crl within 5 seconds; polled up to twice that.
CRL_BOUND = 10.0


@dataclass
class Device:
    device_id: str
    certificate: Path
    key: Path

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.certificate.read_bytes()).serial_number


@dataclass
class Fleet:
    server: ServerProcess
    ca: Path
    current: Device
    revoked: Device
    superseded: Device
    renewed: Device


def revocation_url(server: ServerProcess, path: str) -> str:
    return f"http://127.0.0.1:{server.revocation_port}{path}"


def enroll(server: ServerProcess, secret: str, cert_dir: Path) -> Device:
    result = agent_enroll(server, secret, cert_dir)
    assert result.returncode == 0, result.stderr
    device_id = json.loads((cert_dir / "agent.json").read_text())["device_id"]
    return Device(device_id, cert_dir / "device.pem", cert_dir / "device.key")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("revocation")
    data_dir = init_data_dir(tmp)
    server = start_server(data_dir, "--workers", "1")
    try:
        _, secret = create_token(server)
        current = enroll(server, secret, tmp / "current")
        revoked = enroll(server, secret, tmp / "revoked")
        renewed = enroll(server, secret, tmp / "renewed")
        # Keep the first certificate, renew, and use the new one: the first is superseded.
        old = tmp / "superseded"
        old.mkdir()
        for name in ("device.pem", "device.key"):
            shutil.copy2(renewed.certificate.parent / name, old / name)
        superseded = Device(renewed.device_id, old / "device.pem", old / "device.key")
        for command in ("renew", "status"):
            result = agent(command, "--cert-dir", str(renewed.certificate.parent))
            assert result.returncode == 0, result.stderr
        assert superseded.serial != renewed.serial
        result = admin(server, "devices", "revoke", revoked.device_id, "--reason", "key_compromise")
        assert result.returncode == 0, result.stderr
        yield Fleet(server, data_dir / "ca.pem", current, revoked, superseded, renewed)
    finally:
        server.stop()


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def crl_listing(server: ServerProcess, serials: set[int]) -> x509.CertificateRevocationList:
    """/crl, polled until it lists serials, within the contract's bound (with margin)."""
    deadline = time.monotonic() + CRL_BOUND
    while True:
        status, der = fetch(revocation_url(server, "/crl"))
        assert status in (200, 503), status  # 503: the first CRL is not built yet
        listed = set() if status == 503 else {e.serial_number for e in x509.load_der_x509_crl(der)}
        if serials <= listed:
            return x509.load_der_x509_crl(der)
        assert time.monotonic() < deadline, f"{serials - listed} not in /crl within {CRL_BOUND} s"
        time.sleep(0.2)


# --- nginx ---------------------------------------------------------------------------


class Nginx:
    """nginx as a subprocess, not root: its own prefix, pid, logs and temp dirs in tmp."""

    def __init__(self, tmp: Path, port: int, server_block: str) -> None:
        self.prefix = tmp
        self.port = port
        for name in ("logs", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp / name).mkdir(parents=True, exist_ok=True)
        config = f"""
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{server_block}
}}
"""
        self.config = tmp / "nginx.conf"
        self.config.write_text(config)
        self.process = subprocess.Popen(
            [NGINX, "-p", str(tmp), "-c", str(self.config), "-e", str(tmp / "logs" / "error.log")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                out = self.process.stdout.read().decode() if self.process.stdout else ""
                raise AssertionError(f"nginx exited: {out}\n{self.error_log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, self.error_log
                time.sleep(0.05)

    @property
    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text() if path.exists() else ""

    def reload(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def get(self, device: Device, ca: Path) -> int:
        """GET / with the device's certificate: nginx's status (400 when it refused it)."""
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(device.certificate), str(device.key))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=context, timeout=20
        )
        try:
            connection.request("GET", "/")
            reply = connection.getresponse()
            reply.read()
            return reply.status
        finally:
            connection.close()


def server_block(example: str, fleet: Fleet, port: int, crl_pem: Path | None = None) -> str:
    """The example's server block, pointed at this test's files and ports."""
    text = (EXAMPLES / example).read_text()
    data_dir = fleet.server.data_dir
    replacements = {
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "/etc/nginx/tls/server.pem": str(data_dir / "server.pem"),
        "/etc/nginx/tls/server.key": str(data_dir / "server.key"),
        "/etc/nginx/sielum/ca.pem": str(fleet.ca),
        "http://127.0.0.1:8446/ocsp": revocation_url(fleet.server, "/ocsp"),
        "/etc/nginx/sielum/crl.pem": str(crl_pem),
        # No service behind it here: nginx answers itself once it admitted the device.
        "proxy_pass http://127.0.0.1:8080;": "return 200 'admitted';",
    }
    for old, new in replacements.items():
        if old in text:
            text = text.replace(old, new)
    return text


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[list[Nginx]]:
    started: list[Nginx] = []
    yield started
    for nginx in started:
        nginx.stop()


def test_ok_nginx_with_ocsp_admits_a_current_device_and_refuses_revoked_and_superseded(
    fleet: Fleet, nginx_factory: list[Nginx], tmp_path: Path
) -> None:
    nginx = launch(nginx_factory, tmp_path, "devices-ocsp.conf", fleet)
    assert nginx.get(fleet.current, fleet.ca) == 200
    assert nginx.get(fleet.renewed, fleet.ca) == 200
    assert nginx.get(fleet.revoked, fleet.ca) == 400
    assert nginx.get(fleet.superseded, fleet.ca) == 400
    # Refused for what OCSP said, not for anything else.
    assert nginx.error_log.count("certificate revoked") == 2, nginx.error_log


def test_ok_nginx_with_the_crl_from_refresh_crl_sh_refuses_the_same(
    fleet: Fleet, nginx_factory: list[Nginx], tmp_path: Path
) -> None:
    crl_listing(fleet.server, {fleet.revoked.serial, fleet.superseded.serial})
    crl_pem = tmp_path / "crl.pem"
    refresh = refresh_crl(fleet, crl_pem, reload="true")
    assert refresh.returncode == 0, refresh.stderr
    assert crl_pem.read_text().startswith("-----BEGIN X509 CRL-----")
    nginx = launch(nginx_factory, tmp_path, "devices-crl.conf", fleet, crl_pem=crl_pem)
    assert nginx.get(fleet.current, fleet.ca) == 200
    assert nginx.get(fleet.renewed, fleet.ca) == 200
    assert nginx.get(fleet.revoked, fleet.ca) == 400
    assert nginx.get(fleet.superseded, fleet.ca) == 400
    assert nginx.error_log.count("certificate revoked") == 2, nginx.error_log


def test_fail_refresh_crl_sh_keeps_the_crl_when_another_ca_signed_it(
    fleet: Fleet, tmp_path: Path
) -> None:
    other = init_data_dir(tmp_path, "other")
    crl_pem = tmp_path / "crl.pem"
    crl_pem.write_text("the CRL in place\n")
    refresh = refresh_crl(fleet, crl_pem, ca=other / "ca.pem", reload="false")
    assert refresh.returncode == 1
    assert "is not a CRL signed by" in refresh.stderr
    assert crl_pem.read_text() == "the CRL in place\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("crl.pem.")] == []


def refresh_crl(
    fleet: Fleet, crl_pem: Path, *, reload: str, ca: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "sh",
            str(EXAMPLES / "refresh-crl.sh"),
            revocation_url(fleet.server, "/crl"),
            str(ca or fleet.ca),
            str(crl_pem),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RELOAD": reload},
        check=False,
    )


def launch(started: list[Nginx], tmp: Path, example: str, fleet: Fleet, **kw: Path) -> Nginx:
    """nginx serving the example's server block, pointed at this test's server."""
    port = free_port()
    nginx = Nginx(tmp / "nginx", port, server_block(example, fleet, port, **kw))
    started.append(nginx)
    return nginx


# --- openssl agrees ------------------------------------------------------------------


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_ok_openssl_ocsp_and_verify_crl_check_agree(fleet: Fleet, tmp_path: Path) -> None:
    crl = crl_listing(fleet.server, {fleet.revoked.serial, fleet.superseded.serial})
    crl_pem = tmp_path / "crl.pem"
    crl_pem.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    expected = {
        "current": (fleet.current, "good", None),
        "renewed": (fleet.renewed, "good", None),
        "revoked": (fleet.revoked, "revoked", "keyCompromise"),
        "superseded": (fleet.superseded, "revoked", "superseded"),
    }
    for name, (device, status, reason) in expected.items():
        asked = openssl(
            "ocsp", "-issuer", str(fleet.ca), "-cert", str(device.certificate),
            "-url", revocation_url(fleet.server, "/ocsp"), "-CAfile", str(fleet.ca),
        )  # fmt: skip
        out = asked.stdout + asked.stderr
        assert "Response verify OK" in out, (name, out)
        assert f"{device.certificate}: {status}" in out, (name, out)
        if reason is not None:
            assert f"Reason: {reason}" in out, (name, out)
        verified = openssl(
            "verify", "-crl_check", "-CAfile", str(fleet.ca), "-CRLfile", str(crl_pem),
            str(device.certificate),
        )  # fmt: skip
        if status == "good":
            assert verified.returncode == 0, (name, verified.stdout + verified.stderr)
        else:
            assert verified.returncode != 0, name
            assert "certificate revoked" in verified.stdout + verified.stderr, name


# --- a change shows in /crl, and the CRL's age is exported ---------------------------


def test_ok_a_revocation_shows_in_the_crl_within_the_bound_and_the_age_is_exported(
    fleet: Fleet, tmp_path: Path
) -> None:
    _, secret = create_token(fleet.server)
    late = enroll(fleet.server, secret, tmp_path / "late")
    result = admin(fleet.server, "devices", "revoke", late.device_id)
    assert result.returncode == 0, result.stderr
    crl = crl_listing(fleet.server, {late.serial})
    entry = crl.get_revoked_certificate_by_serial_number(late.serial)
    assert entry is not None
    # Unspecified: no reasonCode extension.
    with pytest.raises(x509.ExtensionNotFound):
        entry.extensions.get_extension_for_class(x509.CRLReason)

    with urllib.request.urlopen(
        f"http://127.0.0.1:{fleet.server.metrics_port}/metrics", timeout=10
    ) as reply:
        text = reply.read().decode()
    ages = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "sielum_crl_age_seconds"
    ]
    assert len(ages) == 1 and 0 <= ages[0] < 20 * 60, ages
    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
