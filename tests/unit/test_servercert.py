"""The server certificate: renewal on disk, the reloadable holder, expiry warnings."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sielum.ca import profile
from sielum.ca.authority import CertificateAuthority
from sielum.ca.datadir import DataDirPaths, init_data_dir, private_pem, write_private_file
from sielum.ca.expiry import WARN_EVERY, WARN_WITHIN, expiry_warning, warning_due
from sielum.ca.servercert import (
    ServerCertificate,
    ServerKeyPair,
    read_key_pair,
    renew_server_certificate,
)
from sielum.clock import FixedClock
from sielum.errors import InvalidArgumentError
from sielum.server.certificates import CertificateWatch

# Real time: openssl verify and TLS handshakes check validity against the real clock.
NOW = datetime.now(UTC).replace(microsecond=0)


def leaf(paths: DataDirPaths) -> x509.Certificate:
    return x509.load_pem_x509_certificates(paths.server_cert.read_bytes())[0]


def names(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in san]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    init_data_dir(tmp_path / "data", sans=["enroll.example.test"])
    return tmp_path / "data"


# --- renewal on disk --------------------------------------------------------------


def test_renew_keeps_names_adds_new_ones_and_the_ca(data_dir: Path) -> None:
    paths = DataDirPaths.of(data_dir)
    before = leaf(paths)
    ca_before = paths.ca_cert.read_bytes()
    key_before = paths.server_key.read_bytes()

    renewed = renew_server_certificate(
        data_dir, extra_sans=["api.example.test", "192.0.2.7", "enroll.example.test"], now=NOW
    )

    after = leaf(paths)
    assert after.serial_number != before.serial_number
    assert paths.server_key.read_bytes() != key_before
    assert names(after) == [
        "localhost",
        "127.0.0.1",
        "::1",
        "enroll.example.test",
        "api.example.test",
        "192.0.2.7",
    ]
    assert renewed.pair.names == tuple(names(after))
    assert renewed.previous.serial == format(before.serial_number, "x")
    # Same CA, byte for byte: the fingerprint agents pin does not change.
    assert paths.ca_cert.read_bytes() == ca_before
    chain = x509.load_pem_x509_certificates(paths.server_cert.read_bytes())
    assert [c.subject for c in chain] == [before.subject, chain[1].subject]
    assert chain[1].public_bytes(serialization.Encoding.PEM) == ca_before
    assert renewed.ca_fingerprint == profile.fingerprint(chain[1])
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.server_cert.stat().st_mode) == 0o644
    assert after.not_valid_after_utc == NOW + profile.SERVER_TTL
    verify = subprocess.run(
        ["openssl", "verify", "-purpose", "sslserver", "-CAfile", str(paths.ca_cert),
         str(paths.server_cert)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert not list(data_dir.glob("*.pending")) and not list(data_dir.glob(".*.tmp"))


def test_renew_with_an_encrypted_ca_key_needs_its_passphrase(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    init_data_dir(data_dir, passphrase=b"correct horse")
    before = DataDirPaths.of(data_dir).server_cert.read_bytes()
    with pytest.raises(InvalidArgumentError, match="CA key is encrypted: set SIELUM_CA_PASSPHRASE"):
        renew_server_certificate(data_dir, now=NOW)
    with pytest.raises(InvalidArgumentError, match="CA key passphrase is wrong"):
        renew_server_certificate(data_dir, passphrase=b"wrong", now=NOW)
    assert DataDirPaths.of(data_dir).server_cert.read_bytes() == before
    renewed = renew_server_certificate(data_dir, passphrase=b"correct horse", now=NOW)
    assert DataDirPaths.of(data_dir).server_cert.read_bytes() == renewed.pair.chain_pem != before


def test_renew_with_a_bad_name_writes_nothing(data_dir: Path) -> None:
    paths = DataDirPaths.of(data_dir)
    before = (paths.server_cert.read_bytes(), paths.server_key.read_bytes())
    with pytest.raises(InvalidArgumentError, match="neither an IP address nor a DNS name"):
        renew_server_certificate(data_dir, extra_sans=["bad name!"], now=NOW)
    assert (paths.server_cert.read_bytes(), paths.server_key.read_bytes()) == before


def test_renewed_certificate_never_outlives_the_ca(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    init_data_dir(data_dir, now=NOW - profile.CA_TTL + timedelta(days=100))
    renewed = renew_server_certificate(data_dir, now=NOW)
    assert renewed.pair.not_after == renewed.ca_not_after < NOW + profile.SERVER_TTL


def test_interrupted_renewal_is_read_through(data_dir: Path) -> None:
    """A renewal that stopped between its two renames: new key, old certificate, new one pending."""
    paths = DataDirPaths.of(data_dir)
    ca = CertificateAuthority.load(data_dir, passphrase=None)
    old = read_key_pair(paths.server_cert, paths.server_key)
    key = profile.ec.generate_private_key(profile.ec.SECP256R1())
    certificate = ca.sign_server(key.public_key(), profile.server_sans(), NOW)
    new_chain = certificate.public_bytes(serialization.Encoding.PEM) + ca.certificate_pem.encode()
    write_private_file(paths.server_key, private_pem(key))
    (data_dir / "server.pem.pending").write_bytes(new_chain)

    pair = read_key_pair(paths.server_cert, paths.server_key)
    assert pair.certificate == certificate != old.certificate

    # The next renewal finishes the swap first, then renews from the finished pair.
    renewed = renew_server_certificate(data_dir, now=NOW)
    assert renewed.previous.certificate == certificate
    assert not (data_dir / "server.pem.pending").exists()
    assert read_key_pair(paths.server_cert, paths.server_key).serial == renewed.pair.serial


def test_mismatched_files_are_refused_saying_so(data_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_data_dir(other)
    paths = DataDirPaths.of(data_dir)
    paths.server_key.write_bytes(DataDirPaths.of(other).server_key.read_bytes())
    with pytest.raises(InvalidArgumentError, match="the server key does not match its certificate"):
        read_key_pair(paths.server_cert, paths.server_key)


def test_key_pair_repr_hides_the_key(data_dir: Path) -> None:
    pair = ServerCertificate.of_data_dir(data_dir).current
    assert b"PRIVATE KEY" in pair.key_pem
    assert "PRIVATE" not in repr(pair) and "key_pem" not in repr(pair)


# --- the holder ---------------------------------------------------------------------


def test_holder_reloads_only_a_changed_pair_and_tells_subscribers(data_dir: Path) -> None:
    holder = ServerCertificate.of_data_dir(data_dir)
    heard: list[ServerKeyPair] = []
    holder.subscribe(heard.append)
    first = holder.current
    assert not holder.files_changed()
    assert holder.reload() is False
    assert heard == []

    renewed = renew_server_certificate(data_dir, extra_sans=["new.example.test"], now=NOW)
    assert holder.files_changed()
    assert holder.reload() is True
    assert holder.current.serial == renewed.pair.serial != first.serial
    assert "new.example.test" in holder.current.names
    assert [pair.serial for pair in heard] == [renewed.pair.serial]
    assert not holder.files_changed()


def test_holder_keeps_serving_its_pair_when_the_files_are_broken(data_dir: Path) -> None:
    holder = ServerCertificate.of_data_dir(data_dir)
    first = holder.current
    DataDirPaths.of(data_dir).server_cert.write_bytes(b"not a certificate")
    with pytest.raises(InvalidArgumentError, match="not a readable PEM certificate"):
        holder.reload()
    assert holder.current is first
    DataDirPaths.of(data_dir).server_key.unlink()
    with pytest.raises(InvalidArgumentError, match=r"server\.key not found"):
        holder.reload()
    assert holder.current is first


class _TlsEchoServer:
    """A TLS echo server on loopback built on the holder's ssl_context (as the dashboard's)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(raw,), daemon=True).start()

    def _echo(self, raw: socket.socket) -> None:
        try:
            with self._context.wrap_socket(raw, server_side=True) as tls:
                while data := tls.recv(1024):
                    tls.sendall(data)
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def echo_context(data_dir: Path) -> Iterator[tuple[ServerCertificate, _TlsEchoServer]]:
    holder = ServerCertificate.of_data_dir(data_dir)
    server = _TlsEchoServer(holder.ssl_context())
    yield holder, server
    server.close()


def _connect(port: int, ca_pem: bytes, name: str = "localhost") -> ssl.SSLSocket:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname=name)


def _peer(tls: ssl.SSLSocket) -> x509.Certificate:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_ssl_context_presents_the_reloaded_pair_to_new_handshakes(
    data_dir: Path, echo_context: tuple[ServerCertificate, _TlsEchoServer]
) -> None:
    holder, server = echo_context
    ca_pem = DataDirPaths.of(data_dir).ca_cert.read_bytes()
    before = _connect(server.port, ca_pem)
    assert _peer(before).serial_number == holder.current.certificate.serial_number

    renewed = renew_server_certificate(data_dir, extra_sans=["dash.example.test"], now=NOW)
    assert holder.reload() is True

    with _connect(server.port, ca_pem, name="dash.example.test") as after:
        assert _peer(after).serial_number == renewed.pair.certificate.serial_number
        after.sendall(b"new")
        assert after.recv(16) == b"new"
    # The connection made before the reload keeps its session and keeps working.
    with before:
        before.sendall(b"still here")
        assert before.recv(16) == b"still here"
        assert _peer(before).serial_number != renewed.pair.certificate.serial_number


# --- expiry warnings ------------------------------------------------------------------


def test_expiry_warning_policy() -> None:
    not_after = datetime(2030, 1, 31, tzinfo=UTC)
    assert expiry_warning("server certificate", not_after, "renew", not_after - WARN_WITHIN) is None
    warning = expiry_warning(
        "server certificate", not_after, "renew", not_after - WARN_WITHIN + timedelta(seconds=1)
    )
    assert warning is not None and warning.days_left == 29
    expired = expiry_warning("CA certificate", not_after, "plan", not_after + timedelta(hours=1))
    assert expired is not None and expired.days_left == -1
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert warning_due(None, at)
    assert not warning_due(at, at + WARN_EVERY - timedelta(seconds=1))
    assert warning_due(at, at + WARN_EVERY)


def _short_lived_server_certificate(data_dir: Path, days: int) -> x509.Certificate:
    """Replace the server certificate with one that ends `days` days from NOW."""
    paths = DataDirPaths.of(data_dir)
    ca = CertificateAuthority.load(data_dir, passphrase=None)
    key = profile.ec.generate_private_key(profile.ec.SECP256R1())
    certificate = ca.sign_server(
        key.public_key(), profile.server_sans(), NOW, ttl=timedelta(days=days)
    )
    write_private_file(paths.server_key, private_pem(key))
    write_private_file(
        paths.server_cert,
        certificate.public_bytes(serialization.Encoding.PEM) + ca.certificate_pem.encode(),
        0o644,
    )
    return certificate


def _expiry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    found = [r for r in caplog.records if r.getMessage().startswith("certificate expir")]
    caplog.clear()
    return found


def test_watch_warns_at_start_then_once_a_day(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _short_lived_server_certificate(data_dir, days=10)
    holder = ServerCertificate.of_data_dir(data_dir)
    ca = CertificateAuthority.load(data_dir, passphrase=None)
    clock = FixedClock(NOW + timedelta(hours=1))
    watch = CertificateWatch(
        holder, ca.certificate, clock, renew_command="sielum-server renew-server-cert"
    )
    caplog.set_level(logging.INFO, logger="sielum.server")

    watch.check()  # what start() does first
    [warning] = _expiry_records(caplog)
    assert warning.levelno == logging.WARNING
    fields = warning.sielum_fields  # type: ignore[attr-defined]
    assert fields["certificate"] == "server certificate"
    assert fields["days_left"] == 9
    assert fields["action"] == "run `sielum-server renew-server-cert`"

    clock.advance(timedelta(hours=23))
    watch.check()
    assert _expiry_records(caplog) == []
    clock.advance(timedelta(hours=1))
    watch.check()
    [again] = _expiry_records(caplog)
    assert again.sielum_fields["days_left"] == 8  # type: ignore[attr-defined]

    # Past the end it says so.
    clock.advance(timedelta(days=9))
    watch.check()
    [expired] = _expiry_records(caplog)
    assert expired.getMessage() == "certificate expired"

    # Renewed: the warnings stop.
    renew_server_certificate(data_dir, now=NOW)
    watch.check()
    assert [r.getMessage() for r in caplog.records] == ["server certificate reloaded"]


def test_watch_warns_of_the_ca_expiry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data_dir = tmp_path / "data"
    init_data_dir(data_dir, now=NOW - profile.CA_TTL + timedelta(days=20))
    holder = ServerCertificate.of_data_dir(data_dir)
    ca = CertificateAuthority.load(data_dir, passphrase=None)
    caplog.set_level(logging.INFO, logger="sielum.server")
    CertificateWatch(holder, ca.certificate, FixedClock(NOW), renew_command="renew").check()
    found = {r.sielum_fields["certificate"]: r for r in _expiry_records(caplog)}  # type: ignore[attr-defined]
    # The server certificate init made then has long expired; the CA has 20 days left.
    assert set(found) == {"server certificate", "CA certificate"}
    assert found["server certificate"].getMessage() == "certificate expired"
    assert found["CA certificate"].sielum_fields["days_left"] == 20  # type: ignore[attr-defined]
    assert "Planning for the CA's expiry" in found["CA certificate"].sielum_fields["action"]  # type: ignore[attr-defined]


def test_watch_without_warnings_stays_quiet(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _short_lived_server_certificate(data_dir, days=3)
    holder = ServerCertificate.of_data_dir(data_dir)
    ca = CertificateAuthority.load(data_dir, passphrase=None)
    caplog.set_level(logging.INFO, logger="sielum.server")
    CertificateWatch(holder, ca.certificate, FixedClock(NOW), renew_command="x", warn=False).check()
    assert _expiry_records(caplog) == []


def test_watch_reports_a_broken_renewal_and_keeps_serving(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = ServerCertificate.of_data_dir(data_dir)
    ca = CertificateAuthority.load(data_dir, passphrase=None)
    watch = CertificateWatch(holder, ca.certificate, FixedClock(NOW), renew_command="x")
    serving = holder.current.serial
    os.truncate(DataDirPaths.of(data_dir).server_cert, 10)
    caplog.set_level(logging.INFO, logger="sielum.server")
    assert watch.reload() is False
    [record] = [r for r in caplog.records if r.getMessage() == "server certificate not reloaded"]
    assert record.levelno == logging.WARNING
    assert record.sielum_fields["serving"] == serving  # type: ignore[attr-defined]
    assert "not a readable PEM certificate" in record.sielum_fields["reason"]  # type: ignore[attr-defined]
    assert holder.current.serial == serving


def test_ssl_context_on_an_event_loop_takes_reloads_on_that_loop(data_dir: Path) -> None:
    """As an asyncio HTTPS listener would use it: the new pair is loaded on the loop."""
    holder = ServerCertificate.of_data_dir(data_dir)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    loaded_on: list[threading.Thread] = []

    def schedule(load: Callable[[], None]) -> None:
        def run() -> None:
            loaded_on.append(threading.current_thread())
            load()

        loop.call_soon_threadsafe(run)

    async def serve() -> asyncio.Server:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.read(16))
            await writer.drain()
            writer.close()

        context = holder.ssl_context(schedule=schedule)
        return await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context)

    server = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    port = server.sockets[0].getsockname()[1]
    ca_pem = DataDirPaths.of(data_dir).ca_cert.read_bytes()
    try:
        with _connect(port, ca_pem) as before:
            assert _peer(before).serial_number == holder.current.certificate.serial_number
        renewed = renew_server_certificate(data_dir, now=NOW)
        holder.reload()
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(10)
        assert loaded_on == [thread]
        with _connect(port, ca_pem) as after:
            assert _peer(after).serial_number == renewed.pair.certificate.serial_number
    finally:
        # asyncio objects are not thread-safe: close the listener on its own loop, and
        # let the echo handlers of the test's connections finish before the loop stops.
        async def close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give files to another owner")
def test_renewal_run_as_root_keeps_the_files_owners(data_dir: Path) -> None:
    paths = DataDirPaths.of(data_dir)
    for path in (paths.server_cert, paths.server_key):
        os.chown(path, 4321, 4322)
    renew_server_certificate(data_dir, now=NOW)
    for path in (paths.server_cert, paths.server_key):
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (4321, 4322), path
