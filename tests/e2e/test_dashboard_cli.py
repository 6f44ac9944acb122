"""`sielum-admin dashboard login` and serve's dashboard options, as processes."""

from __future__ import annotations

import html
import json
import os
import re
import ssl
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.connect_client import DashboardClient

from .conftest import admin, free_port, init_data_dir, run, script, start_server

pytestmark = pytest.mark.e2e


def test_ok_dashboard_login_prints_a_link_that_signs_in_once(
    tmp_path: Path, server_factory: list[object]
) -> None:
    server = start_server(init_data_dir(tmp_path))
    server_factory.append(server)
    result = admin(server, "dashboard", "login")
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip()
    assert re.fullmatch(
        rf"https://127\.0\.0\.1:{server.dashboard_port}/login#[A-Za-z0-9_-]{{43}}", link
    )
    assert "one-time link, valid until" in result.stderr
    client = DashboardClient(server.dashboard_url, (server.data_dir / "ca.pem").read_bytes())
    assert client.sign_in(link).json() == {"admin": "admin"}
    assert client.call("ListEnrollmentTokens").status == 200
    again = DashboardClient(server.dashboard_url, client.ca_pem).sign_in(link)
    assert again.status == 401
    # The code never reaches a log line.
    assert link.split("#")[1] not in server.log

    as_json = admin(server, "--json", "dashboard", "login")
    document = json.loads(as_json.stdout)
    assert set(document) == {"url", "expiresAt"}
    expires = datetime.fromisoformat(document["expiresAt"].replace("Z", "+00:00"))
    assert timedelta(minutes=4) < expires - datetime.now(UTC) <= timedelta(minutes=5)


def test_fail_dashboard_login_when_the_dashboard_is_off(
    tmp_path: Path, server_factory: list[object]
) -> None:
    server = start_server(init_data_dir(tmp_path), "--dashboard-addr", "off")
    server_factory.append(server)
    result = admin(server, "dashboard", "login")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "sielum-admin: this server runs no dashboard (serve --dashboard-addr off) "
        "(FAILED_PRECONDITION)"
    )


def test_ok_dashboard_url_names_the_public_address(
    tmp_path: Path, server_factory: list[object]
) -> None:
    """Behind a reverse proxy: links use the public URL, and pages there may call the API."""
    public = "https://sielum.example.com"
    server = start_server(init_data_dir(tmp_path), "--dashboard-url", public)
    server_factory.append(server)
    link = admin(server, "dashboard", "login").stdout.strip()
    assert link.startswith(f"{public}/login#")
    client = DashboardClient(
        server.dashboard_url, (server.data_dir / "ca.pem").read_bytes(), origin=public
    )
    assert client.sign_in(link).status == 200
    assert client.call("ListDevices").status == 200


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dashboard.example.com")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("dashboard.example.com")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "dashboard.pem", directory / "dashboard.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_ok_dashboard_serves_its_own_certificate(
    tmp_path: Path, server_factory: list[object]
) -> None:
    cert_path, key_path = _self_signed(tmp_path)
    server = start_server(
        init_data_dir(tmp_path),
        "--dashboard-cert",
        str(cert_path),
        "--dashboard-key",
        str(key_path),
    )
    server_factory.append(server)
    served = ssl.get_server_certificate(("127.0.0.1", server.dashboard_port))
    assert x509.load_pem_x509_certificate(served.encode()) == x509.load_pem_x509_certificate(
        cert_path.read_bytes()
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--dashboard-cert", "x.pem"), "--dashboard-cert and --dashboard-key go together"),
        (("--dashboard-url", "http://plain.example"), "--dashboard-url must be an https:// URL"),
        (("--dashboard-addr", "nonsense"), "address must be HOST:PORT"),
    ],
    ids=["cert-without-key", "plain-http-url", "bad-address"],
)
def test_fail_serve_refuses_bad_dashboard_options(
    tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    data_dir = init_data_dir(tmp_path)
    result = run(
        "sielum-server",
        "serve",
        "--data-dir",
        str(data_dir),
        "--workers",
        "1",
        "--enroll-addr",
        f"127.0.0.1:{free_port()}",
        "--api-addr",
        f"127.0.0.1:{free_port()}",
        *flags,
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


_FAKE_BROWSER = """\
import json, os, stat, sys
from urllib.parse import unquote, urlsplit

# Records what a real browser would be given, and reads the page as it would.
target = sys.argv[-1]
record = {"argv": sys.argv, "target": target}
if target.startswith("file://"):
    path = unquote(urlsplit(target).path)
    record["mode"] = stat.S_IMODE(os.stat(path).st_mode)
    record["dir_mode"] = stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)
    record["owner"] = os.stat(path).st_uid
    with open(path, encoding="utf-8") as page:
        record["page"] = page.read()
    record["path"] = path
with open(os.environ["FAKE_BROWSER_RECORD"], "w", encoding="utf-8") as out:
    json.dump(record, out)
"""


def _fake_browser(tmp_path: Path) -> tuple[Path, Path]:
    """(the browser command, the file it records its argv and the page it read in)."""
    script = tmp_path / "fake-browser"
    script.write_text(f"#!{sys.executable}\n{_FAKE_BROWSER}")
    script.chmod(0o700)
    return script, tmp_path / "browser-record.json"


def _no_desktop() -> dict[str, str]:
    """The environment of a machine with no browser: no display, no terminal browser."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY", "TERM")
    }


def test_fail_login_link_read_from_a_process_list(
    tmp_path: Path, server_factory: list[object]
) -> None:
    """`dashboard open` puts the one-time link on no command line, the browser's included.

    The README once said `xdg-open "$(sielum-admin dashboard login)"`: the link was
    then in the argv of xdg-open and of the browser, for any local user to read in
    /proc/*/cmdline and sign in with first. The browser gets a file's path instead,
    the file is its owner's alone and redirects to a working link, and it is gone
    once the command returns.
    """
    server = start_server(init_data_dir(tmp_path))
    server_factory.append(server)
    browser, record_path = _fake_browser(tmp_path)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    result = admin(
        server,
        "dashboard",
        "open",
        env={
            "BROWSER": str(browser),
            "FAKE_BROWSER_RECORD": str(record_path),
            "TMPDIR": str(private_tmp),
        },
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(record_path.read_text())

    # The browser was handed a file, and nothing on any command line carries a code.
    assert record["target"].startswith("file://"), record
    assert "#" not in " ".join(record["argv"])
    assert "login" not in urlsplit(record["target"]).fragment
    assert (record["mode"], record["dir_mode"], record["owner"]) == (0o600, 0o700, os.getuid())
    # The page redirects, with script and without, to a link that signs in once.
    page = record["page"]
    (refresh,) = re.findall(r'http-equiv="refresh" content="0;url=([^"]+)"', page)
    (replaced,) = re.findall(r"window\.location\.replace\((\"[^\"]+\")\)", page)
    link = html.unescape(refresh)
    assert json.loads(replaced) == link
    assert re.fullmatch(
        rf"https://127\.0\.0\.1:{server.dashboard_port}/login#[A-Za-z0-9_-]{{43}}", link
    )
    code = link.split("#")[1]
    # Nor does the link reach the terminal, the log, or a file left behind.
    assert code not in result.stdout + result.stderr
    assert code not in server.log
    assert not Path(record["path"]).exists()
    assert list(private_tmp.iterdir()) == []
    assert "opened a one-time login link in your browser" in result.stdout
    client = DashboardClient(server.dashboard_url, (server.data_dir / "ca.pem").read_bytes())
    assert client.sign_in(link).json() == {"admin": "admin"}
    assert DashboardClient(server.dashboard_url, client.ca_pem).sign_in(link).status == 401


def test_fail_dashboard_open_without_a_browser_says_to_paste_the_link(
    tmp_path: Path, server_factory: list[object]
) -> None:
    server = start_server(init_data_dir(tmp_path))
    server_factory.append(server)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    environment = {**_no_desktop(), "TMPDIR": str(private_tmp)}
    # Not run(): it adds os.environ back, BROWSER and the display with it.
    result = subprocess.run(
        [
            script("sielum-admin"),
            "--server",
            f"127.0.0.1:{server.api_port}",
            "--cert-dir",
            str(server.data_dir / "admin"),
            "dashboard",
            "open",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "sielum-admin: no web browser found here: run `sielum-admin dashboard login` and "
        "paste the link it prints into your browser's address bar (never into a command)"
    )
    # A browser that fails to start: the same advice, and no file left behind.
    failing = admin(
        server, "dashboard", "open", env={"BROWSER": "false", "TMPDIR": str(private_tmp)}
    )
    assert failing.returncode == 1
    assert "did not start: run `sielum-admin dashboard login`" in failing.stderr
    assert "login#" not in failing.stdout + failing.stderr
    assert list(private_tmp.iterdir()) == []


def test_docs_never_put_a_login_link_on_a_command_line() -> None:
    """No README or docs page tells an admin to pass the link to a command."""
    root = Path(__file__).resolve().parents[2]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        # A command substitution of `dashboard login` (or a pipe from it into xargs).
        assert not re.search(
            r"\$\([^)]*dashboard\s+login|dashboard\s+login[^\n]*\|\s*xargs", text
        ), page
