"""The data directory on disk: creates the CA, server and first admin files, and reads them back."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sielum.ca import profile
from sielum.ca.authority import CA_CERT_FILE, CA_KEY_FILE, PASSPHRASE_ENV, CertificateAuthority
from sielum.ca.keywrap import MIN_PASSPHRASE_CHARS, encrypt_private_key
from sielum.errors import InvalidArgumentError

SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"
ADMIN_DIR = "admin"
ADMIN_CERT_FILE = "admin.pem"
ADMIN_KEY_FILE = "admin.key"
FIRST_ADMIN_NAME = "admin"
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700


@dataclass(frozen=True)
class DataDirPaths:
    """Where each file of a data directory lives."""

    root: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    admin_dir: Path

    @classmethod
    def of(cls, root: Path) -> DataDirPaths:
        return cls(
            root=root,
            ca_cert=root / CA_CERT_FILE,
            ca_key=root / CA_KEY_FILE,
            server_cert=root / SERVER_CERT_FILE,
            server_key=root / SERVER_KEY_FILE,
            admin_dir=root / ADMIN_DIR,
        )


@dataclass(frozen=True)
class InitResult:
    """What `sielum-server init` made: the CA fingerprint to hand to agents, and the files."""

    fingerprint: str
    paths: DataDirPaths


def init_data_dir(
    data_dir: Path,
    *,
    sans: Sequence[str] = (),
    passphrase: bytes | None = None,
    now: datetime | None = None,
) -> InitResult:
    """Makes a new CA, the server certificate and the first admin bundle; never overwrites."""
    now = now if now is not None else datetime.now(UTC)
    # Every input is checked before the first file is written, so a typo in --san
    # cannot leave a half-made data directory behind.
    check_init(data_dir, sans=sans, passphrase=passphrase)
    server_names = profile.server_sans(sans)
    paths = DataDirPaths.of(data_dir)
    data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_certificate = profile.self_signed_ca_certificate(key=ca_key, now=now)
    # The key goes first and exclusively: if two inits race, one of them fails here,
    # before either has written a certificate the other's key does not match.
    write_private_file(
        paths.ca_key,
        encrypt_private_key(ca_key, passphrase) if passphrase else private_pem(ca_key),
        exclusive=True,
    )
    write_private_file(paths.ca_cert, _pem(ca_certificate), PUBLIC_MODE, exclusive=True)

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_certificate = profile.server_certificate(
        public_key=server_key.public_key(),
        sans=server_names,
        ca_certificate=ca_certificate,
        ca_key=ca_key,
        serial=profile.random_serial(),
        now=now,
    )
    write_private_file(paths.server_key, private_pem(server_key), exclusive=True)
    # Leaf first, then the CA: the agent pins the CA from the chain the server sends.
    write_private_file(
        paths.server_cert,
        _pem(server_certificate) + _pem(ca_certificate),
        PUBLIC_MODE,
        exclusive=True,
    )

    authority = CertificateAuthority(ca_certificate, ca_key)
    write_admin_bundle(authority, FIRST_ADMIN_NAME, paths.admin_dir, now)
    return InitResult(fingerprint=authority.fingerprint, paths=paths)


def check_init(data_dir: Path, *, sans: Sequence[str], passphrase: bytes | None) -> None:
    """What init_data_dir refuses, checked without writing anything: the SANs, the
    passphrase, and a data directory that holds a CA or its files already."""
    profile.server_sans(sans)
    if passphrase is not None:
        check_passphrase(passphrase)
    paths = DataDirPaths.of(data_dir)
    if paths.ca_cert.exists() or paths.ca_key.exists():
        raise InvalidArgumentError(f"{data_dir} already holds a Sielum CA; refusing to overwrite")
    admin_files = (paths.admin_dir / ADMIN_CERT_FILE, paths.admin_dir / ADMIN_KEY_FILE)
    for path in (paths.server_cert, paths.server_key, *admin_files):
        if path.exists():
            raise InvalidArgumentError(f"{path} already exists; refusing to overwrite")


def check_passphrase(passphrase: bytes) -> None:
    """A passphrase for a new CA key: at least MIN_PASSPHRASE_CHARS characters.

    Only `init` asks: a key encrypted under a shorter passphrase by an older
    Sielum still loads.
    """
    characters = len(passphrase.decode("utf-8", errors="replace"))
    if characters == 0:
        raise InvalidArgumentError("CA passphrase must not be empty")
    if characters < MIN_PASSPHRASE_CHARS:
        raise InvalidArgumentError(
            f"{PASSPHRASE_ENV} is too short ({characters} characters): use at least "
            f"{MIN_PASSPHRASE_CHARS}, for example four random words"
        )


def write_admin_bundle(
    ca: CertificateAuthority, name: str, out_dir: Path, now: datetime | None = None
) -> Path:
    """Writes admin.key, admin.pem and ca.pem for a new admin into out_dir; returns out_dir."""
    now = now if now is not None else datetime.now(UTC)
    profile.validate_name(name, what="admin name")
    cert_path, key_path, ca_path = (
        out_dir / ADMIN_CERT_FILE,
        out_dir / ADMIN_KEY_FILE,
        out_dir / CA_CERT_FILE,
    )
    for path in (cert_path, key_path):
        if path.exists():
            raise InvalidArgumentError(f"{path} already exists; refusing to overwrite")
    ca_pem = ca.certificate_pem.encode("ascii")
    # An existing ca.pem is fine only if it is this very CA: overwriting another CA's
    # certificate would silently break whatever else trusts that directory.
    if ca_path.exists() and ca_path.read_bytes() != ca_pem:
        raise InvalidArgumentError(
            f"{ca_path} holds a different CA certificate; refusing to overwrite"
        )
    out_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.sign_admin(key.public_key(), name, now)
    write_private_file(key_path, private_pem(key), exclusive=True)
    write_private_file(
        cert_path, issued.certificate_pem.encode("ascii"), PUBLIC_MODE, exclusive=True
    )
    if not ca_path.exists():
        write_private_file(ca_path, ca_pem, PUBLIC_MODE)
    return out_dir


def load_server_credentials(data_dir: Path) -> tuple[bytes, bytes, bytes]:
    """(server key PEM, server chain PEM, CA certificate PEM) for grpc.ssl_server_credentials."""
    paths = DataDirPaths.of(data_dir)
    contents = []
    for path in (paths.server_key, paths.server_cert, paths.ca_cert):
        try:
            contents.append(path.read_bytes())
        except FileNotFoundError:
            raise InvalidArgumentError(
                f"{path} not found: run `sielum-server init --data-dir {data_dir}` first"
            ) from None
    return contents[0], contents[1], contents[2]


def write_private_file(
    path: Path,
    data: bytes,
    mode: int = PRIVATE_MODE,
    *,
    exclusive: bool = False,
    like: Path | None = None,
) -> None:
    """Writes data to path atomically: a temp file beside it, fsync, then rename over it.

    The temp file is created with its final mode, so a private key is never readable
    by others, not even for a moment. With exclusive=True an existing path is never
    replaced: FileExistsError instead. With like, the new file gets that file's owner
    and group when we may set them (run as root), so that a file root rewrites in
    the server's data directory stays readable by the server's own user.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        try:
            # The umask may have narrowed the mode given to os.open; set it exactly
            # while the file is still empty so public files are readable as promised.
            os.fchmod(fd, mode)
            _copy_owner(fd, like)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            # link() refuses an existing target, where rename() would replace it.
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _copy_owner(fd: int, like: Path | None) -> None:
    if like is None or os.geteuid() != 0:
        return
    try:
        info = like.stat()
    except FileNotFoundError:
        return
    os.fchown(fd, info.st_uid, info.st_gid)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry itself reaches the disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """An unencrypted PKCS#8 PEM: the file's mode protects it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
