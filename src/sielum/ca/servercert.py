"""The server's own TLS certificate: renewed on disk with the same CA, reloaded while serving.

`renew_server_certificate` (behind `sielum-server renew-server-cert`) writes a new key
and certificate into the data directory; `ServerCertificate` holds the pair a running
server presents and reloads it when the files change. Every listener that presents the
server certificate (the gRPC ports, the dashboard's HTTPS) subscribes to one holder, so
one reload reaches them all.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sielum.ca import profile
from sielum.ca.authority import CertificateAuthority
from sielum.ca.datadir import (
    PUBLIC_MODE,
    DataDirPaths,
    private_pem,
    write_private_file,
)
from sielum.errors import InvalidArgumentError

log = logging.getLogger("sielum.server")

# A renewal stages the new pair under these names before swapping it in, so that a
# crash between the two renames leaves a certificate that matches the key on disk.
PENDING_SUFFIX = ".pending"
LOCK_FILE = ".server-cert.lock"


@dataclass(frozen=True)
class ServerKeyPair:
    """The server's key and certificate chain (leaf, then CA), checked to belong together."""

    key_pem: bytes = field(repr=False)  # never in a log line
    chain_pem: bytes
    certificate: x509.Certificate

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def names(self) -> tuple[str, ...]:
        """The SANs, as `--san` takes them: DNS names and IP addresses."""
        return tuple(str(name.value) for name in subject_alternative_names(self.certificate))


def subject_alternative_names(certificate: x509.Certificate) -> tuple[x509.GeneralName, ...]:
    """The DNS and IP SANs of a server certificate, in their order."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(
        name for name in extension.value if isinstance(name, x509.DNSName | x509.IPAddress)
    )


def parse_key_pair(key_pem: bytes, chain_pem: bytes, *, where: str) -> ServerKeyPair:
    """The pair, or InvalidArgumentError saying why it is unusable (where names the files)."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise InvalidArgumentError(f"{where}: the server key is not a readable PEM key") from None
    try:
        certificate = x509.load_pem_x509_certificates(chain_pem)[0]
    except (ValueError, IndexError):
        raise InvalidArgumentError(
            f"{where}: the server certificate is not a readable PEM certificate"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != (
        certificate.public_key()
    ):
        raise InvalidArgumentError(f"{where}: the server key does not match its certificate")
    return ServerKeyPair(key_pem=key_pem, chain_pem=chain_pem, certificate=certificate)


def _pending(path: Path) -> Path:
    return path.with_name(path.name + PENDING_SUFFIX)


def read_key_pair(cert_path: Path, key_path: Path) -> ServerKeyPair:
    """Reads the pair from disk; a renewal interrupted between its two renames is read through.

    A renewal replaces the key first and the certificate second; if it stopped in
    between, the new certificate waits beside the new key as `server.pem.pending`
    (tests/unit/test_servercert.py::test_interrupted_renewal_is_read_through).
    """
    where = f"{cert_path} and {key_path}"
    try:
        key_pem = key_path.read_bytes()
        chain_pem = cert_path.read_bytes()
    except FileNotFoundError as error:
        raise InvalidArgumentError(
            f"{error.filename} not found: run `sielum-server init --data-dir "
            f"{cert_path.parent}` first"
        ) from None
    except OSError as error:
        raise InvalidArgumentError(
            f"cannot read {error.filename}: {(error.strerror or str(error)).lower()}"
        ) from None
    try:
        return parse_key_pair(key_pem, chain_pem, where=where)
    except InvalidArgumentError as mismatch:
        try:
            return parse_key_pair(key_pem, _pending(cert_path).read_bytes(), where=where)
        except (InvalidArgumentError, OSError):
            raise mismatch from None


class ServerCertificate:
    """The key pair the server presents, reloadable while it serves.

    Listeners read `current` for each new handshake or subscribe to hear of a new
    pair; connections already open keep the pair they were made with. `reload()`
    reads the files again and keeps the current pair when they are unusable, so a
    half-written renewal never takes a listener down.
    """

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[ServerKeyPair], None]] = []
        self._stamp = self._file_stamp()
        self._current = read_key_pair(cert_path, key_path)

    @classmethod
    def of_data_dir(cls, data_dir: Path) -> ServerCertificate:
        paths = DataDirPaths.of(data_dir)
        return cls(paths.server_cert, paths.server_key)

    @property
    def current(self) -> ServerKeyPair:
        return self._current

    def subscribe(self, callback: Callable[[ServerKeyPair], None]) -> None:
        """callback(pair) after every reload that changed the pair (not for the current one)."""
        with self._lock:
            self._subscribers.append(callback)

    def files_changed(self) -> bool:
        """Whether the files differ (inode, size, mtime) from those last read: two stat calls."""
        return self._file_stamp() != self._stamp

    def reload(self) -> bool:
        """Reads the files again; True when the pair changed and subscribers were told.

        Raises InvalidArgumentError, keeping the current pair, when the files are
        missing or do not belong together.
        """
        with self._lock:
            stamp = self._file_stamp()
            pair = read_key_pair(self.cert_path, self.key_path)
            self._stamp = stamp
            if pair.chain_pem == self._current.chain_pem and pair.key_pem == self._current.key_pem:
                return False
            self._current = pair
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(pair)
            except Exception:
                # One listener failing to take the new pair must not keep it from the others.
                log.exception("a listener could not take the new server certificate")
        return True

    def ssl_context(
        self, schedule: Callable[[Callable[[], None]], object] | None = None
    ) -> ssl.SSLContext:
        """A TLS server context presenting the current pair, and every pair reloaded after it.

        For listeners built on the ssl module (an HTTPS listener on an asyncio loop):
        a reload loads the new pair into this same context, which new handshakes then
        use, and connections already open keep theirs. schedule runs that load where
        the context is used, e.g. `loop.call_soon_threadsafe`, since reloads come
        from another thread; without it the load runs on the reloading thread.
        """
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        load_into(context, self.current)

        def take(pair: ServerKeyPair) -> None:
            if schedule is None:
                load_into(context, pair)
            else:
                schedule(lambda: load_into(context, pair))

        self.subscribe(take)
        return context

    def _file_stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        stamps: list[tuple[int, int, int] | None] = []
        for path in (self.cert_path, self.key_path):
            try:
                info = path.stat()
            except OSError:
                stamps.append(None)
            else:
                stamps.append((info.st_ino, info.st_size, info.st_mtime_ns))
        return tuple(stamps)


def load_into(context: ssl.SSLContext, pair: ServerKeyPair) -> None:
    """context.load_cert_chain from memory: the key goes through an anonymous memfd, no file."""
    with _memory_file(pair.chain_pem) as chain, _memory_file(pair.key_pem) as key:
        context.load_cert_chain(chain, key)


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    # ssl reads certificates and keys only from paths; a memfd is a path that no
    # other process can open and that vanishes when closed.
    fd = os.memfd_create("sielum-server-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RenewedServerCertificate:
    pair: ServerKeyPair
    previous: ServerKeyPair
    ca_fingerprint: str
    ca_not_after: datetime


def renew_server_certificate(
    data_dir: Path,
    *,
    extra_sans: Sequence[str] = (),
    passphrase: bytes | None = None,
    now: datetime,
) -> RenewedServerCertificate:
    """A new key and server certificate from the same CA, keeping its SANs plus extra_sans.

    Both files are written beside the old ones first, then renamed over them, key
    first; read_key_pair reads through a renewal stopped between the two renames,
    and the next renewal finishes it.
    """
    paths = DataDirPaths.of(data_dir)
    added = [profile.parse_san(name) for name in extra_sans]
    ca = CertificateAuthority.load(data_dir, passphrase=passphrase)
    with _exclusive(data_dir):
        _finish_interrupted_renewal(paths)
        previous = read_key_pair(paths.server_cert, paths.server_key)
        names = list(subject_alternative_names(previous.certificate))
        for name in added:
            if name not in names:
                names.append(name)
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = ca.sign_server(key.public_key(), tuple(names), now)
        chain = certificate.public_bytes(serialization.Encoding.PEM) + ca.certificate_pem.encode()
        key_pem = private_pem(key)
        pair = parse_key_pair(key_pem, chain, where="the new server certificate")
        pending_key, pending_cert = _pending(paths.server_key), _pending(paths.server_cert)
        write_private_file(pending_key, key_pem, like=paths.server_key)
        write_private_file(pending_cert, chain, PUBLIC_MODE, like=paths.server_cert)
        os.replace(pending_key, paths.server_key)
        os.replace(pending_cert, paths.server_cert)
        _fsync_dir(data_dir)
    return RenewedServerCertificate(
        pair=pair,
        previous=previous,
        ca_fingerprint=ca.fingerprint,
        ca_not_after=ca.certificate.not_valid_after_utc,
    )


def _finish_interrupted_renewal(paths: DataDirPaths) -> None:
    pending_key, pending_cert = _pending(paths.server_key), _pending(paths.server_cert)
    if not pending_key.exists() and pending_cert.exists():
        # The key was swapped in, the certificate not yet: finish what was begun.
        try:
            parse_key_pair(
                paths.server_key.read_bytes(), pending_cert.read_bytes(), where=str(pending_cert)
            )
        except (InvalidArgumentError, OSError):
            pending_cert.unlink()
        else:
            os.replace(pending_cert, paths.server_cert)
            return
    # Stopped before the first rename: the old pair is intact; drop the staged one.
    for leftover in (pending_key, pending_cert):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


@contextlib.contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """One renewal at a time per data directory."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
