"""The agent's pinning: the rules on a chain, a real TLS probe on loopback, and --server parsing."""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sielum.ca import profile
from sielum.endpoint.address import ServerAddress, parse_server, resolve_api_endpoint
from sielum.endpoint.errors import (
    NameMismatchError,
    PinMismatchError,
    ServerUnreachableError,
    UsageError,
)
from sielum.endpoint.pinning import check_chain, fetch_chain, find_pinned, names_host, probe

NOW = datetime.now(UTC)


@dataclass
class Pki:
    ca: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey

    @property
    def pin(self) -> bytes:
        return hashlib.sha256(self.ca.public_bytes(serialization.Encoding.DER)).digest()


def make_pki(*sans: str, now: datetime = NOW) -> Pki:
    """A CA and a server certificate made by the production profile."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = profile.self_signed_ca_certificate(key=ca_key, now=now)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = profile.server_certificate(
        public_key=leaf_key.public_key(),
        sans=profile.server_sans(sans),
        ca_certificate=ca,
        ca_key=ca_key,
        serial=profile.random_serial(),
        now=now,
    )
    return Pki(ca, ca_key, leaf, leaf_key)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki("enroll.example.test", "*.fleet.example.test")


@pytest.fixture(scope="module")
def rogue() -> Pki:
    return make_pki("enroll.example.test")


# --- the rules, on a chain in hand -------------------------------------------------


def test_a_leaf_issued_by_the_pinned_ca_passes(pki: Pki) -> None:
    pinned = check_chain([pki.leaf, pki.ca], pki.pin, "enroll.example.test")
    assert pinned.ca == pki.ca and pinned.leaf == pki.leaf


def test_fail_wrong_pin(pki: Pki, rogue: Pki) -> None:
    with pytest.raises(PinMismatchError) as caught:
        check_chain([pki.leaf, pki.ca], rogue.pin, "localhost")
    assert caught.value.message == (
        "CA fingerprint mismatch: no certificate the server presented has the "
        "fingerprint given with --ca-fingerprint; the token was not sent"
    )


def test_fail_chain_without_the_ca(pki: Pki) -> None:
    with pytest.raises(PinMismatchError, match="CA fingerprint mismatch"):
        check_chain([pki.leaf], pki.pin, "localhost")


def test_fail_rogue_leaf_with_the_real_ca_in_its_chain(pki: Pki, rogue: Pki) -> None:
    with pytest.raises(PinMismatchError) as caught:
        check_chain([rogue.leaf, pki.ca, rogue.ca], pki.pin, "localhost")
    assert caught.value.message == (
        "the server's certificate is not issued by the pinned CA (another CA signed it); "
        "refusing to send the token"
    )


def test_fail_pin_on_the_leaf_itself(pki: Pki) -> None:
    leaf_pin = hashlib.sha256(pki.leaf.public_bytes(serialization.Encoding.DER)).digest()
    with pytest.raises(PinMismatchError, match="is not a CA certificate"):
        check_chain([pki.leaf, pki.ca], leaf_pin, "localhost")


def test_fail_a_device_certificate_posing_as_the_server(pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    device = profile.device_certificate(
        public_key=key.public_key(),
        device_id="d-1",
        ca_certificate=pki.ca,
        ca_key=pki.ca_key,
        serial=profile.random_serial(),
        now=NOW,
        ttl=timedelta(days=1),
    )
    with pytest.raises(PinMismatchError, match=r"not a TLS server certificate \(no serverAuth\)"):
        check_chain([device, pki.ca], pki.pin, "localhost")


def test_fail_host_not_named(pki: Pki) -> None:
    # Its own error (exit 10), not a pin mismatch: the CA is the right one.
    with pytest.raises(NameMismatchError) as caught:
        check_chain([pki.leaf, pki.ca], pki.pin, "other.example.test")
    assert caught.value.message.startswith(
        "the server's certificate does not name other.example.test"
    )
    assert "renew-server-cert --data-dir DIR --san other.example.test" in caught.value.message
    assert caught.value.exit_code == 10


def test_fail_expired_leaf() -> None:
    old = make_pki(now=NOW - timedelta(days=800))  # server certificates live 730 days
    with pytest.raises(PinMismatchError, match="outside its validity period"):
        check_chain([old.leaf, old.ca], old.pin, "localhost")


@pytest.mark.parametrize(
    ("host", "named"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.1", True),
        ("::1", True),
        ("0:0:0:0:0:0:0:1", True),
        ("enroll.example.test", True),
        ("enroll.example.test.", True),
        ("a.fleet.example.test", True),
        ("fleet.example.test", False),
        ("a.b.fleet.example.test", False),
        ("127.0.0.2", False),
        ("example.test", False),
    ],
)
def test_names_host(pki: Pki, host: str, named: bool) -> None:
    assert names_host(pki.leaf, host) is named


def test_find_pinned_wants_a_sha256(pki: Pki) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        find_pinned([pki.ca], b"short")


# --- a real TLS handshake on loopback ---------------------------------------------


class TlsServer:
    """Serves a chain on loopback and records any application bytes it receives."""

    def __init__(
        self, tmp: Path, chain: list[x509.Certificate], key: ec.EllipticCurvePrivateKey, host: str
    ) -> None:
        chain_path, key_path = tmp / f"chain-{id(self)}.pem", tmp / f"key-{id(self)}.pem"
        chain_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(chain_path, key_path)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, 0), family=family)
        self.listener.settimeout(0.1)
        self.address = ServerAddress(host, self.listener.getsockname()[1])
        self.received = b""
        self.server_names: list[str | None] = []
        self.context.sni_callback = lambda sock, name, ctx: self.server_names.append(name)  # type: ignore[assignment, func-returns-value]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    while chunk := tls.recv(4096):
                        self.received += chunk
            except (OSError, ssl.SSLError):
                pass

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.listener.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[list[TlsServer]]:
    servers: list[TlsServer] = []
    yield servers
    for server in servers:
        server.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_probe_reads_the_chain_as_sent(
    pki: Pki, tmp_path: Path, serve: list[TlsServer], host: str
) -> None:
    server = TlsServer(tmp_path, [pki.leaf, pki.ca], pki.leaf_key, host)
    serve.append(server)
    assert fetch_chain(server.address, timeout=5) == [pki.leaf, pki.ca]
    pinned = probe(server.address, pki.pin, timeout=5)
    assert pinned.ca == pki.ca
    server.stop()
    assert server.received == b""


def test_probe_sends_sni_for_a_name(pki: Pki, tmp_path: Path, serve: list[TlsServer]) -> None:
    server = TlsServer(tmp_path, [pki.leaf, pki.ca], pki.leaf_key, "127.0.0.1")
    serve.append(server)
    probe(ServerAddress("localhost", server.address.port), pki.pin, timeout=5)
    server.stop()
    assert server.server_names == ["localhost"]


def test_probe_of_a_rogue_sends_nothing(
    pki: Pki, rogue: Pki, tmp_path: Path, serve: list[TlsServer]
) -> None:
    server = TlsServer(tmp_path, [rogue.leaf, pki.ca], rogue.leaf_key, "127.0.0.1")
    serve.append(server)
    with pytest.raises(PinMismatchError, match="not issued by the pinned CA"):
        probe(server.address, pki.pin, timeout=5)
    server.stop()
    assert server.received == b""


def test_probe_of_a_closed_port_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerUnreachableError) as caught:
        fetch_chain(ServerAddress("127.0.0.1", port), timeout=5)
    assert caught.value.message == f"cannot reach 127.0.0.1:{port}: connection refused"


def test_probe_of_a_server_that_is_not_tls_is_unreachable() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_in_plain_text() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=answer_in_plain_text, daemon=True)
    thread.start()
    try:
        with pytest.raises(ServerUnreachableError) as caught:
            fetch_chain(ServerAddress("127.0.0.1", port), timeout=5)
    finally:
        thread.join(timeout=5)
        listener.close()
    assert caught.value.message.startswith(f"TLS handshake with 127.0.0.1:{port} failed: ")


# --- --server ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "target"),
    [
        ("https://enroll.example.test", "enroll.example.test", 443, "enroll.example.test:443"),
        (
            "https://enroll.example.test:8443",
            "enroll.example.test",
            8443,
            "enroll.example.test:8443",
        ),
        (
            "https://enroll.example.test:8443/",
            "enroll.example.test",
            8443,
            "enroll.example.test:8443",
        ),
        ("HTTPS://Enroll.Example.Test", "enroll.example.test", 443, "enroll.example.test:443"),
        ("enroll.example.test:8443", "enroll.example.test", 8443, "enroll.example.test:8443"),
        ("127.0.0.1:8443", "127.0.0.1", 8443, "127.0.0.1:8443"),
        ("  127.0.0.1:8443\n", "127.0.0.1", 8443, "127.0.0.1:8443"),
        ("[::1]:8443", "::1", 8443, "[::1]:8443"),
        ("https://[::1]:8443", "::1", 8443, "[::1]:8443"),
        ("https://[2001:db8::1]", "2001:db8::1", 443, "[2001:db8::1]:443"),
        ("enroll.example.test", "enroll.example.test", 443, "enroll.example.test:443"),
    ],
)
def test_parse_server(text: str, host: str, port: int, target: str) -> None:
    address = parse_server(text)
    assert (address.host, address.port, address.target) == (host, port, target)
    assert address.url == f"https://{target}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--server is empty"),
        ("http://enroll.example.test", "only https:// is supported"),
        ("grpc://127.0.0.1:8443", "only https:// is supported"),
        ("::1:8443", "put an IPv6 address in brackets"),
        ("https://enroll.example.test:http", "Port could not be cast"),
        ("https://enroll.example.test:70000", "Port out of range"),
        ("https://enroll.example.test:0", "port 0 is not a port"),
        ("https://enroll.example.test/enroll", "has a path"),
        ("https://user:pw@enroll.example.test", "must not carry credentials"),
        ("https://:8443", "has no host"),
    ],
)
def test_fail_parse_server(text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_server(text)
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("endpoint", "target"),
    [
        (":8444", "enroll.example.test:8444"),
        ("api.example.test:9444", "api.example.test:9444"),
        ("[::1]:8444", "[::1]:8444"),
    ],
)
def test_resolve_api_endpoint(endpoint: str, target: str) -> None:
    enrolled_with = ServerAddress("enroll.example.test", 8443)
    assert resolve_api_endpoint(endpoint, enrolled_with).target == target


@pytest.mark.parametrize("endpoint", ["", ":", ":http", ":70000", "api.example.test"])
def test_fail_resolve_api_endpoint(endpoint: str) -> None:
    with pytest.raises(ValueError):
        resolve_api_endpoint(endpoint, ServerAddress("enroll.example.test", 8443))
