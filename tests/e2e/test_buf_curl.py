"""An outside gRPC client: buf curl uses reflection, makes a token, enrolls an openssl CSR.

The README's own buf curl commands are run here word for word, against a real server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..conftest import openssl_verify
from .conftest import ServerProcess, init_data_dir, start_server

REPO = Path(__file__).resolve().parents[2]
BUF = REPO / "node_modules" / ".bin" / "buf"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if not BUF.exists():
        pytest.skip(f"{BUF} is missing: run `npm ci` (package.json pins @bufbuild/buf)")
    process = start_server(init_data_dir(tmp_path_factory.mktemp("buf-curl")))
    yield process
    process.stop()


def buf_curl(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        # buf keeps a cache; a temp one keeps the test from writing to $HOME.
        env={**os.environ, "BUF_CACHE_DIR": str(tmp / "buf-cache")},
    )


def _tls(server: ServerProcess, *, admin: bool) -> list[str]:
    args = ["--cacert", str(server.data_dir / "ca.pem")]
    if admin:
        bundle = server.data_dir / "admin"
        args += ["--cert", str(bundle / "admin.pem"), "--key", str(bundle / "admin.key")]
    return args


def test_reflection_lists_on_each_port_what_can_be_called_there(
    server: ServerProcess, tmp_path: Path
) -> None:
    enroll_url = f"https://127.0.0.1:{server.enroll_port}"
    api_url = f"https://127.0.0.1:{server.api_port}"
    enroll = buf_curl(tmp_path, *_tls(server, admin=False), "--list-services", enroll_url)
    assert enroll.returncode == 0, enroll.stderr
    # The API port asks for a client certificate during the TLS handshake itself.
    api = buf_curl(tmp_path, *_tls(server, admin=True), "--list-services", api_url)
    assert api.returncode == 0, api.stderr
    reflection = {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
    # The enroll port: no client certificate, so only what a caller without one may call.
    assert set(enroll.stdout.split()) == {
        "sielum.enroll.v1.EnrollService",
        "grpc.health.v1.Health",
        *reflection,
    }, enroll.stdout
    assert set(api.stdout.split()) == {
        "sielum.enroll.v1.EnrollService",
        "sielum.admin.v1.AdminService",
        "sielum.agent.v1.AgentService",
        "sielum.directory.v1.DirectoryService",
        "grpc.health.v1.Health",
        *reflection,
    }, api.stdout
    # Every listed service can be described, reflection v1 included.
    for args, url in ((_tls(server, admin=False), enroll_url), (_tls(server, admin=True), api_url)):
        methods = buf_curl(tmp_path, *args, "--list-methods", url)
        assert methods.returncode == 0, methods.stderr
        listed = set(methods.stdout.split())
        assert "grpc.reflection.v1.ServerReflection/ServerReflectionInfo" in listed
        assert "sielum.enroll.v1.EnrollService/Enroll" in listed
        assert ("sielum.admin.v1.AdminService/ListDevices" in listed) is (url == api_url)


def test_token_and_enrollment_with_buf_curl_and_openssl(
    server: ServerProcess, tmp_path: Path
) -> None:
    created = buf_curl(
        tmp_path,
        *_tls(server, admin=True),
        "-d",
        '{"label": "buf curl", "maxUses": "1"}',
        f"https://127.0.0.1:{server.api_port}/sielum.admin.v1.AdminService/CreateEnrollmentToken",
    )
    assert created.returncode == 0, created.stderr
    reply = json.loads(created.stdout)
    assert reply["token"]["label"] == "buf curl"
    assert reply["token"]["maxUses"] == "1"
    secret = reply["secret"]

    key, csr = tmp_path / "device.key", tmp_path / "device.csr"
    _openssl_csr(key, csr, "buf-host")
    body = tmp_path / "enroll.json"
    body.write_text(
        json.dumps(
            {
                "token": secret,
                "csrPem": csr.read_text(),
                "hostname": "buf-host",
                "facts": {"client": "buf"},
            }
        )
    )
    enrolled = buf_curl(
        tmp_path,
        *_tls(server, admin=False),
        "-d",
        f"@{body}",
        f"https://127.0.0.1:{server.enroll_port}/sielum.enroll.v1.EnrollService/Enroll",
    )
    assert enrolled.returncode == 0, enrolled.stderr
    answer = json.loads(enrolled.stdout)
    assert set(answer) == {
        "deviceId",
        "certificatePem",
        "caCertificatePem",
        "notAfter",
        "apiEndpoint",
    }
    assert answer["apiEndpoint"] == f"127.0.0.1:{server.api_port}"
    assert answer["caCertificatePem"] == (server.data_dir / "ca.pem").read_text()

    certificate_path = tmp_path / "device.pem"
    certificate_path.write_text(answer["certificatePem"])
    verify = openssl_verify(server.data_dir / "ca.pem", certificate_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.strip() == f"{certificate_path}: OK"
    certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
    private_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert certificate.public_key() == private_key.public_key()

    # Sending the same request again is a retry after a lost answer: the same device,
    # no second use. A new key on the used-up token is refused, saying why.
    again = buf_curl(
        tmp_path,
        *_tls(server, admin=False),
        "-d",
        f"@{body}",
        f"https://127.0.0.1:{server.enroll_port}/sielum.enroll.v1.EnrollService/Enroll",
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["deviceId"] == answer["deviceId"]
    _openssl_csr(tmp_path / "other.key", csr, "other")
    body.write_text(json.dumps({"token": secret, "csrPem": csr.read_text()}))
    refused = buf_curl(
        tmp_path,
        *_tls(server, admin=False),
        "-d",
        f"@{body}",
        f"https://127.0.0.1:{server.enroll_port}/sielum.enroll.v1.EnrollService/Enroll",
    )
    # buf exits with the gRPC status code shifted left by three: PERMISSION_DENIED is 7.
    assert refused.returncode == 7 << 3, refused.stderr
    assert "permission_denied" in refused.stderr.lower()
    assert "exhausted" in refused.stderr

    # The openssl key and the issued certificate are a working device identity.
    beat = buf_curl(
        tmp_path,
        "--cacert",
        str(server.data_dir / "ca.pem"),
        "--cert",
        str(certificate_path),
        "--key",
        str(key),
        f"https://127.0.0.1:{server.api_port}/sielum.agent.v1.AgentService/Heartbeat",
    )
    assert beat.returncode == 0, beat.stderr
    assert json.loads(beat.stdout)["deviceId"] == answer["deviceId"]


def _openssl_csr(key: Path, csr: Path, common_name: str) -> None:
    """A fresh P-256 key and its CSR, made by openssl as an outside tool would."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-subj",
            f"/CN={common_name}",
            "-out",
            str(csr),
        ],
        check=True,
        capture_output=True,
    )


def readme_buf_curl_blocks() -> list[str]:
    """Every fenced shell block of README.md that runs buf curl, as written there."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"^```(?:sh|bash)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    return [block for block in blocks if "buf curl" in block]


def test_every_buf_curl_in_the_readme_speaks_grpc() -> None:
    """buf curl speaks Connect unless told; Sielum's ports speak gRPC."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    lines = [line for block in blocks for line in block.splitlines() if "buf curl" in line]
    assert len(lines) >= 5, "the README shows fewer buf curl commands than it did"
    assert all("buf curl --protocol grpc " in line for line in lines), lines
    assert readme_buf_curl_blocks()


def test_the_readme_commands_work_as_written(server: ServerProcess, tmp_path: Path) -> None:
    script = "\n".join(readme_buf_curl_blocks())
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={
            **os.environ,
            "PATH": f"{BUF.parent}:{os.environ['PATH']}",
            "BUF_CACHE_DIR": str(tmp_path / "buf-cache"),
            # What the README says to set for a server other than serve-dev.sh's.
            "DATA": str(server.data_dir),
            "ENROLL": f"127.0.0.1:{server.enroll_port}",
            "API": f"127.0.0.1:{server.api_port}",
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert '"status": "SERVING"' in out
    assert "sielum.enroll.v1.EnrollService" in out.split()
    checked, heartbeat, listed = (
        json.loads(doc) for doc in re.findall(r"^\{\n.*?^\}$", out, re.M | re.S)[-3:]
    )
    assert (checked["valid"], checked["status"]) == (True, "CERTIFICATE_STATUS_CURRENT")
    assert checked["device"]["id"] == heartbeat["deviceId"]
    assert listed["devices"], out
    assert heartbeat["deviceId"] in [d["id"] for d in listed["devices"]]
    assert {d["hostname"] for d in listed["devices"]} == {"buf-host"}
    certificate = tmp_path / "device.pem"
    verify = openssl_verify(server.data_dir / "ca.pem", certificate)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Run from the repository's root, as the README says, what the block leaves there
    # is ignored by git.
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "buf-cache")
    assert left == ["device.csr", "device.key", "device.pem"], left
    ignored = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", *left],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ignored.stdout.split() == left, ignored.stdout + ignored.stderr
