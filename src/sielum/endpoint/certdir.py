"""The agent's cert dir on disk: device.key, device.pem, ca.pem, agent.json, written atomically."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sielum.ca.profile import role_of
from sielum.endpoint.errors import CertDirError, NotEnrolledError

KEY_FILE = "device.key"
CERT_FILE = "device.pem"
CA_FILE = "ca.pem"
STATE_FILE = "agent.json"
# A key made for an enrollment whose answer has not been stored yet. It is kept
# until the enrollment completes, so that a rerun after a lost answer sends the
# same key and the server returns the same device without spending another use.
PENDING_KEY_FILE = "enroll.key.pending"
# A renewal in progress: the new key, then the new certificate. Both are in place
# before either real file is touched, so an interrupted swap can be finished.
RENEW_KEY_FILE = "renew.key.pending"
RENEW_CERT_FILE = "renew.pem.pending"
LOCK_FILE = ".lock"

PRIVATE_MODE = 0o600
# A key an operator let a group read (a monitoring user running `status`).
GROUP_READABLE_KEY_MODE = 0o640
PUBLIC_MODE = 0o644
DIR_MODE = 0o700
STATE_VERSION = 1
# A reader without the lock that finds files that do not belong together (a renewal
# or re-enrollment between its reads) reads them all again, this many times.
READ_ATTEMPTS = 5
READ_RETRY_DELAY = 0.05  # seconds, times the attempt number


@dataclass(frozen=True)
class AgentState:
    """agent.json: what the agent needs to call the API after enrollment."""

    device_id: str
    api_endpoint: str  # host:port of AgentService, resolved at enrollment
    server: str  # the enroll URL the agent was given
    enrolled_at: datetime
    ca_fingerprint: str

    def to_json(self) -> bytes:
        document = {
            "version": STATE_VERSION,
            "device_id": self.device_id,
            "api_endpoint": self.api_endpoint,
            "server": self.server,
            "enrolled_at": self.enrolled_at.isoformat().replace("+00:00", "Z"),
            "ca_fingerprint": self.ca_fingerprint,
        }
        return (json.dumps(document, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> AgentState:
        document = json.loads(data)
        if not isinstance(document, dict):
            raise ValueError("agent.json is not a JSON object")
        return cls(
            device_id=str(document["device_id"]),
            api_endpoint=str(document["api_endpoint"]),
            server=str(document["server"]),
            enrolled_at=datetime.fromisoformat(str(document["enrolled_at"])),
            ca_fingerprint=str(document.get("ca_fingerprint", "")),
        )


@dataclass(frozen=True)
class StoredEnrollment:
    """A complete, consistent enrollment read back from the cert dir."""

    state: AgentState
    key: ec.EllipticCurvePrivateKey
    key_pem: bytes
    certificate: x509.Certificate
    certificate_pem: bytes
    ca: x509.Certificate
    ca_pem: bytes


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted: the agent runs unattended; the file mode is the protection.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def same_key(key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.DER, spki)
    theirs = certificate.public_key().public_bytes(serialization.Encoding.DER, spki)
    return ours == theirs


class CertDir:
    """One agent's directory. Callers hold lock() around every read-modify-write.

    Nothing in it is trusted that another user could have put there: the directory
    and every file the agent opens must belong to the agent's user (or to root) and
    must not be writable by group or others; files are opened without following
    symbolic links, and only a regular file is read. A pending key is reused only if
    the agent's user owns it with mode 0600, as the agent makes it. Anything else
    is a CertDirError (exit code 6) naming the file and why
    (tests/unit/test_agent_certdir.py, the test_fail_planted_* and test_fail_*_cert_dir_*).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def is_enrolled(self) -> bool:
        # agent.json is written last: its presence is what "enrolled" means (a symbolic
        # link counts, so that it is refused when read rather than written through).
        return os.path.lexists(self.path(STATE_FILE))

    def check_dir(self) -> None:
        """Refuses a cert dir another user owns or may write (it may be a symlink to one ours)."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except NotADirectoryError:
            raise CertDirError(f"cert dir {self.root} exists and is not a directory") from None
        except OSError as error:
            raise CertDirError(f"cannot open cert dir {self.root}: {_why(error)}") from None
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        _check_trusted(info, f"cert dir {self.root}")

    def _open(self, name: str, flags: int = os.O_RDONLY, mode: int = PRIVATE_MODE) -> int:
        """A descriptor of a regular file in the cert dir that only we (or root) could write.

        Never through a symbolic link; O_NONBLOCK so that a planted FIFO cannot hang us.
        FileNotFoundError passes through for the caller; the rest is a CertDirError.
        """
        path = self.path(name)
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
        except FileNotFoundError:
            raise
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise CertDirError(f"{path} is a symbolic link: refusing to follow it") from None
            raise CertDirError(f"cannot open {path}: {_why(error)}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise CertDirError(f"{path} is not a regular file: refusing to use it")
            _check_trusted(info, str(path))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _read_file(self, name: str) -> tuple[bytes, os.stat_result]:
        """The content of a trusted file, and its stat; FileNotFoundError if there is none."""
        fd = self._open(name)
        try:
            info = os.fstat(fd)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        except OSError as error:
            raise CertDirError(f"cannot read {self.path(name)}: {_why(error)}") from None
        finally:
            os.close(fd)
        return b"".join(chunks), info

    def prepare(self) -> None:
        """Creates the directory (0700) if needed and proves it is writable, before any dialling."""
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except FileExistsError:
            raise CertDirError(f"cert dir {self.root} exists and is not a directory") from None
        except OSError as error:
            raise CertDirError(f"cannot create cert dir {self.root}: {_why(error)}") from None
        if not self.root.is_dir():
            raise CertDirError(f"cert dir {self.root} exists and is not a directory")
        self.check_dir()
        probe = self.path(f".probe.{secrets.token_hex(4)}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            raise CertDirError(f"cert dir {self.root} is not writable: {_why(error)}") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock, so two agent runs never interleave their writes."""
        self.check_dir()
        try:
            fd = self._open(LOCK_FILE, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
        except FileNotFoundError as error:
            raise CertDirError(f"cannot lock cert dir {self.root}: {_why(error)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- enrollment -------------------------------------------------------------

    def pending_key(self) -> ec.EllipticCurvePrivateKey | None:
        """The key of an enrollment that did not finish, if there is a usable one."""
        path = self.path(PENDING_KEY_FILE)
        exists = os.path.lexists
        if not exists(path) and not self.is_enrolled() and exists(self.path(KEY_FILE)):
            # A run stopped after moving the key into place but before agent.json:
            # that key may be enrolled already, so it is the one to retry with.
            self._rename(KEY_FILE, PENDING_KEY_FILE)
        try:
            data, info = self._read_file(PENDING_KEY_FILE)
        except FileNotFoundError:
            return None
        if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) != PRIVATE_MODE:
            # Not a key this agent made (it makes them 0600, as its own user): one that
            # root left, or that others could read, may be known to someone else, and
            # enrolling it would hand them the device. A fresh key replaces it.
            self.discard(PENDING_KEY_FILE)
            return None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            key = None
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return key
        # A damaged leftover is no use to a retry; a fresh key replaces it.
        self.discard(PENDING_KEY_FILE)
        return None

    def write_pending_key(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._write(PENDING_KEY_FILE, private_pem(key), PRIVATE_MODE)

    def save_enrollment(self, state: AgentState, certificate_pem: bytes, ca_pem: bytes) -> None:
        """Moves the pending key into place beside its certificate, then writes agent.json.

        Order matters: agent.json goes last, so a crash before it leaves a cert dir
        that is "not enrolled", and the pending key (or device.key) is reused on the
        next run, which the server answers with the same device.
        """
        if not self.path(PENDING_KEY_FILE).exists():
            raise CertDirError(f"{self.path(PENDING_KEY_FILE)} vanished during enrollment")
        self._write(CERT_FILE, certificate_pem, PUBLIC_MODE)
        self._write(CA_FILE, ca_pem, PUBLIC_MODE)
        self._keep_group_read(PENDING_KEY_FILE)
        self._rename(PENDING_KEY_FILE, KEY_FILE)
        self._write(STATE_FILE, state.to_json(), PUBLIC_MODE)

    # --- renewal ----------------------------------------------------------------

    def stage_renewal_key(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.discard(RENEW_CERT_FILE)
        self._write(RENEW_KEY_FILE, private_pem(key), PRIVATE_MODE)

    def commit_renewal(self, certificate_pem: bytes) -> None:
        """Swaps in the staged key and its certificate.

        The new certificate is on disk before the key is replaced, and load() finishes
        a swap that stopped between the two renames (tests/unit/test_agent_certdir.py),
        so the pair on disk is always one that works.
        """
        self._write(RENEW_CERT_FILE, certificate_pem, PUBLIC_MODE)
        self._keep_group_read(RENEW_KEY_FILE)
        self._rename(RENEW_KEY_FILE, KEY_FILE)
        self._rename(RENEW_CERT_FILE, CERT_FILE)

    def _keep_group_read(self, new_key: str) -> None:
        """Gives a new key the group and group read bit of the key it replaces, if it had them.

        An operator who let a group read device.key (so that a monitoring user can
        run `status`) keeps that after every renewal. Never the others' bits; and
        the read bit only once the group is the old key's, so a key never becomes
        readable by a group nobody chose. Best effort: a renewal is not failed for it.
        """
        try:
            old = os.lstat(self.path(KEY_FILE))
        except OSError:
            return
        if not stat.S_ISREG(old.st_mode) or not old.st_mode & stat.S_IRGRP:
            return
        fd = self._open(new_key)
        try:
            if os.fstat(fd).st_gid != old.st_gid:
                os.fchown(fd, -1, old.st_gid)
            os.fchmod(fd, GROUP_READABLE_KEY_MODE)
        except OSError:
            pass  # not in that group: the key stays 0600, readable by its owner only
        finally:
            os.close(fd)

    def discard_renewal(self) -> None:
        self.discard(RENEW_KEY_FILE)
        self.discard(RENEW_CERT_FILE)

    # --- reading ----------------------------------------------------------------

    def load_locked(self) -> StoredEnrollment:
        """load() under the lock; a missing directory is "not enrolled", not a lock failure."""
        self.require_dir()
        with self.lock():
            return self.load()

    def read(self) -> StoredEnrollment:
        """The enrollment, for a reader that writes nothing (status): no lock file is made.

        A read-only cert dir, or a monitoring user allowed to read the files (see the
        README, "Monitoring"), can run `status`. Under a shared lock when the lock file
        opens read-only (the agent's own user, root): no writer is then at work.
        Without one, every file is still whole (each is replaced by an atomic rename),
        and a set of files that does not belong together, read while a renewal or
        re-enrollment swapped them, is read again (tests/unit/test_agent_certdir.py).
        """
        self.require_dir()
        self.check_dir()
        lock = self._open_lock_for_reading()
        if lock is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH)
                return self._load(finish=False)
            finally:
                os.close(lock)
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return self._load(finish=False)
            except _MixedFilesError:
                if attempt == READ_ATTEMPTS:
                    raise
                time.sleep(READ_RETRY_DELAY * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _open_lock_for_reading(self) -> int | None:
        """A read-only descriptor of the lock file; None when it is absent or not ours to read."""
        try:
            return os.open(
                self.path(LOCK_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            )
        except OSError:
            return None

    def require_dir(self) -> None:
        if not self.root.is_dir():
            raise NotEnrolledError(
                f"{self.root} holds no enrollment: run `sielum-agent enroll --cert-dir {self.root}`"
            )

    def load(self) -> StoredEnrollment:
        """Reads and cross-checks the enrollment; finishes an interrupted renewal first."""
        self.require_dir()
        self.check_dir()
        return self._load(finish=True)

    def _load(self, *, finish: bool) -> StoredEnrollment:
        """Reads and cross-checks the files; finish: complete an interrupted renewal on disk."""
        state_path = self.path(STATE_FILE)
        try:
            state = AgentState.from_json(self._read_file(STATE_FILE)[0])
        except FileNotFoundError:
            raise NotEnrolledError(
                f"{self.root} holds no enrollment (no {STATE_FILE}): "
                f"run `sielum-agent enroll --cert-dir {self.root}`"
            ) from None
        except OSError as error:
            raise CertDirError(f"cannot read {state_path}: {_why(error)}") from None
        except (ValueError, KeyError):
            raise CertDirError(
                f"{state_path} is damaged: re-enroll with `sielum-agent enroll --force`"
            ) from None

        key_pem, key = self._read_key(KEY_FILE)
        certificate_pem, certificate = self._read_certificate(CERT_FILE)
        if not same_key(key, certificate):
            certificate_pem, certificate = self._finish_interrupted_renewal(key, finish=finish)
        ca_pem, ca = self._read_certificate(CA_FILE)
        if not finish:
            # Without the lock, what a re-enrollment (--force) swaps file by file.
            self._check_belong_together(state, certificate, ca)
        return StoredEnrollment(state, key, key_pem, certificate, certificate_pem, ca, ca_pem)

    def _finish_interrupted_renewal(
        self, key: ec.EllipticCurvePrivateKey, *, finish: bool
    ) -> tuple[bytes, x509.Certificate]:
        """The staged certificate of the new key; moved into place only if finish."""
        staged: x509.Certificate | None = None
        pending = self.path(RENEW_CERT_FILE)
        if os.path.lexists(pending):
            try:
                pem, staged = self._read_certificate(RENEW_CERT_FILE)
            except CertDirError:
                if os.path.lexists(pending):
                    raise
                # Moved into place meanwhile by the renewal: a reader without the
                # lock reads every file again.
        if staged is not None and same_key(key, staged):
            if finish:
                self._rename(RENEW_CERT_FILE, CERT_FILE)
            return pem, staged
        raise _MixedFilesError(
            f"{self.path(KEY_FILE)} does not match {self.path(CERT_FILE)}: "
            "re-enroll with `sielum-agent enroll --force`"
        )

    def _check_belong_together(
        self, state: AgentState, certificate: x509.Certificate, ca: x509.Certificate
    ) -> None:
        if role_of(certificate) != ("device", state.device_id):
            raise _MixedFilesError(
                f"{self.path(CERT_FILE)} is not the certificate of device {state.device_id} "
                f"that {self.path(STATE_FILE)} names: re-enroll with `sielum-agent enroll --force`"
            )
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise _MixedFilesError(
                f"{self.path(CERT_FILE)} is not issued by {self.path(CA_FILE)}: "
                "re-enroll with `sielum-agent enroll --force`"
            ) from None

    def _read(self, name: str) -> tuple[Path, bytes]:
        path = self.path(name)
        try:
            return path, self._read_file(name)[0]
        except FileNotFoundError:
            raise CertDirError(f"{path} is missing: re-enroll with --force") from None

    def _read_key(self, name: str) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
        path, data = self._read(name)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise CertDirError(f"{path} is not a readable private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertDirError(f"{path} is not an ECDSA key")
        return data, key

    def _read_certificate(self, name: str) -> tuple[bytes, x509.Certificate]:
        path, data = self._read(name)
        try:
            return data, x509.load_pem_x509_certificate(data)
        except ValueError:
            raise CertDirError(f"{path} is not a readable PEM certificate") from None

    # --- atomic file operations -------------------------------------------------

    def _write(self, name: str, data: bytes, mode: int) -> None:
        """Temp file beside the target, created with its final mode, fsync, rename, dir fsync."""
        target = self.path(name)
        tmp = self.path(f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            # The file is born with its final mode, so a key is never readable by
            # others, not even between open() and chmod().
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            try:
                os.fchmod(fd, mode)  # the umask may have narrowed a public file's mode
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            self._sync_dir()
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise CertDirError(f"cannot write {target}: {_why(error)}") from None

    def _rename(self, source: str, target: str) -> None:
        try:
            os.replace(self.path(source), self.path(target))
            self._sync_dir()
        except OSError as error:
            raise CertDirError(f"cannot write {self.path(target)}: {_why(error)}") from None

    def discard(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(name).unlink()

    def _sync_dir(self) -> None:
        # A rename is durable only once the directory entry itself is on disk.
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _MixedFilesError(CertDirError):
    """Files that do not belong together: read mid-swap without the lock, or damaged."""


def _check_trusted(info: os.stat_result, what: str) -> None:
    """Refuses what another user could have written: another owner (root may own it), or
    write permission for the group or others."""
    uid = os.geteuid()
    if info.st_uid not in (uid, 0):
        raise CertDirError(
            f"{what} is owned by uid {info.st_uid}, not by this user (uid {uid}) or root: "
            "refusing to use it"
        )
    bits = (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
    writable = [who for who, bit in bits if info.st_mode & bit]
    if writable:
        raise CertDirError(
            f"{what} is writable by {' and '.join(writable)} "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): refusing to use it"
        )


def _why(error: OSError) -> str:
    if error.errno == errno.EROFS:
        return "read-only file system"
    return (error.strerror or str(error)).lower()
