"""The agent's cert dir: modes, atomic writes, retry keys, finishing an interrupted renewal."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sielum.ca import profile
from sielum.endpoint.certdir import (
    AgentState,
    CertDir,
    private_pem,
)
from sielum.endpoint.enrollment import check_issued
from sielum.endpoint.errors import CertDirError, NotEnrolledError, ServerAnswerError
from sielum.endpoint.pinning import sha256_der

NOW = datetime.now(UTC)


class Ca:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = profile.self_signed_ca_certificate(key=self.key, now=NOW)
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, key: ec.EllipticCurvePrivateKey, device_id: str = "dev-1") -> bytes:
        certificate = profile.device_certificate(
            public_key=key.public_key(),
            device_id=device_id,
            ca_certificate=self.certificate,
            ca_key=self.key,
            serial=profile.random_serial(),
            now=NOW,
            ttl=timedelta(days=90),
        )
        return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def ca() -> Ca:
    return Ca()


@pytest.fixture
def umask() -> Iterator[None]:
    # A strict umask must not make the public files unreadable, nor loosen the key.
    old = os.umask(0o077)
    yield
    os.umask(old)


def _state() -> AgentState:
    return AgentState(
        device_id="dev-1",
        api_endpoint="127.0.0.1:8444",
        server="https://127.0.0.1:8443",
        enrolled_at=NOW,
        ca_fingerprint="sha256:" + "00" * 32,
    )


def _enrolled(tmp_path: Path, ca: Ca) -> tuple[CertDir, ec.EllipticCurvePrivateKey]:
    cert_dir = CertDir(tmp_path / "agent")
    cert_dir.prepare()
    key = ec.generate_private_key(ec.SECP256R1())
    cert_dir.write_pending_key(key)
    cert_dir.save_enrollment(_state(), ca.issue(key), ca.pem)
    return cert_dir, key


def _files(cert_dir: CertDir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in cert_dir.root.iterdir()}


def test_enrollment_files_and_modes(tmp_path: Path, ca: Ca, umask: None) -> None:
    cert_dir, key = _enrolled(tmp_path, ca)
    root = cert_dir.root
    assert sorted(p.name for p in root.iterdir()) == [
        "agent.json",
        "ca.pem",
        "device.key",
        "device.pem",
    ]
    assert root.stat().st_mode & 0o777 == 0o700
    assert (root / "device.key").stat().st_mode & 0o777 == 0o600
    for name in ("device.pem", "ca.pem", "agent.json"):
        assert (root / name).stat().st_mode & 0o777 == 0o644, name
    assert json.loads((root / "agent.json").read_text()) == {
        "version": 1,
        "device_id": "dev-1",
        "api_endpoint": "127.0.0.1:8444",
        "server": "https://127.0.0.1:8443",
        "enrolled_at": NOW.isoformat().replace("+00:00", "Z"),
        "ca_fingerprint": "sha256:" + "00" * 32,
    }
    stored = cert_dir.load_locked()
    assert stored.state == _state()
    assert stored.key_pem == private_pem(key)


def test_pending_key_is_reused_by_a_rerun(tmp_path: Path) -> None:
    cert_dir = CertDir(tmp_path)
    assert cert_dir.pending_key() is None
    key = ec.generate_private_key(ec.SECP256R1())
    cert_dir.write_pending_key(key)
    assert (tmp_path / "enroll.key.pending").stat().st_mode & 0o777 == 0o600
    again = cert_dir.pending_key()
    assert again is not None and again.private_numbers() == key.private_numbers()


def test_a_damaged_pending_key_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "enroll.key.pending").write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    assert CertDir(tmp_path).pending_key() is None
    assert not (tmp_path / "enroll.key.pending").exists()


def test_a_key_moved_in_place_before_agent_json_is_retried(tmp_path: Path, ca: Ca) -> None:
    cert_dir, key = _enrolled(tmp_path, ca)
    (cert_dir.root / "agent.json").unlink()  # the crash came just before agent.json
    retried = cert_dir.pending_key()
    assert retried is not None and retried.private_numbers() == key.private_numbers()


def test_an_enrolled_key_is_never_taken_for_a_retry(tmp_path: Path, ca: Ca) -> None:
    cert_dir, _ = _enrolled(tmp_path, ca)
    assert cert_dir.pending_key() is None  # --force makes a fresh key
    assert (cert_dir.root / "device.key").exists()


def test_renewal_swaps_key_and_certificate(tmp_path: Path, ca: Ca) -> None:
    cert_dir, _ = _enrolled(tmp_path, ca)
    new_key = ec.generate_private_key(ec.SECP256R1())
    cert_dir.stage_renewal_key(new_key)
    new_pem = ca.issue(new_key)
    cert_dir.commit_renewal(new_pem)
    stored = cert_dir.load_locked()
    assert stored.key_pem == private_pem(new_key)
    assert stored.certificate_pem == new_pem
    assert sorted(_files(cert_dir)) == [".lock", "agent.json", "ca.pem", "device.key", "device.pem"]


def test_a_failed_renewal_keeps_the_old_files(tmp_path: Path, ca: Ca) -> None:
    cert_dir, _ = _enrolled(tmp_path, ca)
    before = _files(cert_dir)
    cert_dir.stage_renewal_key(ec.generate_private_key(ec.SECP256R1()))
    cert_dir.discard_renewal()
    assert _files(cert_dir) == before


def test_an_interrupted_swap_is_finished_on_load(tmp_path: Path, ca: Ca) -> None:
    cert_dir, _ = _enrolled(tmp_path, ca)
    root = cert_dir.root
    new_key = ec.generate_private_key(ec.SECP256R1())
    new_pem = ca.issue(new_key)
    # The state commit_renewal leaves if it stops between its two renames.
    (root / "renew.pem.pending").write_bytes(new_pem)
    (root / "device.key").write_bytes(private_pem(new_key))
    stored = cert_dir.load_locked()
    assert stored.certificate_pem == new_pem
    assert (root / "device.pem").read_bytes() == new_pem
    assert not (root / "renew.pem.pending").exists()


def test_fail_key_and_certificate_that_do_not_match(tmp_path: Path, ca: Ca) -> None:
    cert_dir, _ = _enrolled(tmp_path, ca)
    (cert_dir.root / "device.pem").write_bytes(ca.issue(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(CertDirError) as caught:
        cert_dir.load_locked()
    assert caught.value.message == (
        f"{cert_dir.root / 'device.key'} does not match {cert_dir.root / 'device.pem'}: "
        "re-enroll with `sielum-agent enroll --force`"
    )


def test_fail_not_enrolled(tmp_path: Path) -> None:
    with pytest.raises(NotEnrolledError, match="holds no enrollment"):
        CertDir(tmp_path / "missing").load_locked()
    with pytest.raises(NotEnrolledError, match=r"holds no enrollment \(no agent.json\)"):
        CertDir(tmp_path).load_locked()


def test_fail_damaged_agent_json(tmp_path: Path, ca: Ca) -> None:
    cert_dir, _ = _enrolled(tmp_path, ca)
    (cert_dir.root / "agent.json").write_text("{not json")
    with pytest.raises(CertDirError, match=r"agent\.json is damaged"):
        cert_dir.load_locked()


def test_fail_prepare_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(CertDirError, match=r"cannot create cert dir .*: not a directory"):
        CertDir(tmp_path / "file" / "agent").prepare()
    with pytest.raises(CertDirError, match="exists and is not a directory"):
        CertDir(tmp_path / "file").prepare()


# --- checking the server's answer ------------------------------------------------------


def test_check_issued_accepts_a_good_answer(ca: Ca) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate, issuer = check_issued(
        ca.issue(key).decode(),
        ca.pem.decode(),
        pin=sha256_der(ca.certificate),
        key=key,
        device_id="dev-1",
    )
    assert issuer == ca.certificate
    assert isinstance(certificate, x509.Certificate)


def test_fail_check_issued(ca: Ca) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = Ca()
    pin = sha256_der(ca.certificate)
    cases = [
        (ca.issue(key), other.pem, "answered with a CA"),
        (other.issue(key), ca.pem, "not signed by the pinned CA"),
        (ca.issue(ec.generate_private_key(ec.SECP256R1())), ca.pem, "not for this agent's key"),
        (ca.issue(key, "dev-2"), ca.pem, "does not name device dev-1"),
        (b"not a certificate", ca.pem, "cannot be parsed"),
    ]
    for certificate_pem, ca_pem, message in cases:
        with pytest.raises(ServerAnswerError, match=message):
            check_issued(
                certificate_pem.decode(), ca_pem.decode(), pin=pin, key=key, device_id="dev-1"
            )


# --- a cert dir another user could have written to ---------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="handing a file to another user (chown) needs root"
)
NOBODY = 65534


def test_fail_planted_pending_key_is_never_enrolled(tmp_path: Path) -> None:
    """A valid key left as enroll.key.pending that the agent did not make (readable by
    others, so someone may hold a copy) is discarded, and a fresh key is made instead."""
    planted = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "enroll.key.pending"
    path.write_bytes(private_pem(planted))
    path.chmod(0o644)
    cert_dir = CertDir(tmp_path)
    assert cert_dir.pending_key() is None
    assert not path.exists()


@needs_root
def test_fail_planted_pending_key_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "enroll.key.pending"
    path.write_bytes(private_pem(ec.generate_private_key(ec.SECP256R1())))
    path.chmod(0o600)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(CertDirError) as refused:
        CertDir(tmp_path).pending_key()
    assert refused.value.message == (
        f"{path} is owned by uid {NOBODY}, not by this user (uid 0) or root: refusing to use it"
    )
    assert path.exists()


@pytest.mark.parametrize(
    ("mode", "who"), [(0o777, "group and others"), (0o770, "group"), (0o703, "others")]
)
def test_fail_writable_cert_dir_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    root = tmp_path / "agent"
    root.mkdir()
    root.chmod(mode)
    cert_dir = CertDir(root)
    message = f"cert dir {root} is writable by {who} (mode {mode:04o}): refusing to use it"
    for step in (cert_dir.prepare, cert_dir.load_locked, lambda: cert_dir.lock().__enter__()):
        with pytest.raises(CertDirError) as refused:
            step()
        assert refused.value.message == message
    assert list(root.iterdir()) == []  # not even a lock file was made


@needs_root
def test_fail_cert_dir_of_another_user_is_refused(tmp_path: Path, ca: Ca) -> None:
    cert_dir, _ = _enrolled(tmp_path, ca)
    os.chown(cert_dir.root, NOBODY, NOBODY)
    with pytest.raises(CertDirError) as refused:
        cert_dir.load_locked()
    assert refused.value.message == (
        f"cert dir {cert_dir.root} is owned by uid {NOBODY}, not by this user (uid 0) or root: "
        "refusing to use it"
    )


def test_fail_planted_lock_symlink_is_not_followed(tmp_path: Path) -> None:
    """As root, following a planted .lock would create or truncate any file it names."""
    victim = tmp_path / "victim"
    root = tmp_path / "agent"
    root.mkdir(mode=0o700)
    (root / ".lock").symlink_to(victim)
    with pytest.raises(CertDirError) as refused, CertDir(root).lock():
        pass
    assert refused.value.message == f"{root / '.lock'} is a symbolic link: refusing to follow it"
    assert not victim.exists()


@pytest.mark.parametrize("name", ["ca.pem", "agent.json", "device.pem", "device.key"])
def test_fail_planted_symlink_in_place_of_a_file_is_refused(
    tmp_path: Path, ca: Ca, name: str
) -> None:
    cert_dir, _ = _enrolled(tmp_path, ca)
    elsewhere = tmp_path / f"elsewhere-{name}"
    (cert_dir.root / name).rename(elsewhere)
    (cert_dir.root / name).symlink_to(elsewhere)
    with pytest.raises(CertDirError) as refused:
        cert_dir.load_locked()
    assert refused.value.message == (
        f"{cert_dir.root / name} is a symbolic link: refusing to follow it"
    )


def test_fail_planted_fifo_does_not_hang_the_agent(tmp_path: Path, ca: Ca) -> None:
    cert_dir, _ = _enrolled(tmp_path, ca)
    (cert_dir.root / "agent.json").unlink()
    os.mkfifo(cert_dir.root / "agent.json", 0o600)
    with pytest.raises(CertDirError) as refused:
        cert_dir.load_locked()
    assert refused.value.message == (
        f"{cert_dir.root / 'agent.json'} is not a regular file: refusing to use it"
    )


@pytest.mark.parametrize("name", ["ca.pem", "agent.json", "device.pem", ".lock"])
def test_fail_file_writable_by_others_is_refused(tmp_path: Path, ca: Ca, name: str) -> None:
    cert_dir, _ = _enrolled(tmp_path, ca)
    path = cert_dir.root / name
    path.touch()
    path.chmod(0o666)
    with pytest.raises(CertDirError) as refused:
        cert_dir.load_locked()
    assert refused.value.message == (
        f"{path} is writable by group and others (mode 0666): refusing to use it"
    )


@needs_root
def test_fail_file_of_another_user_is_refused(tmp_path: Path, ca: Ca) -> None:
    cert_dir, _ = _enrolled(tmp_path, ca)
    os.chown(cert_dir.root / "ca.pem", NOBODY, NOBODY)
    with pytest.raises(CertDirError) as refused:
        cert_dir.load_locked()
    assert refused.value.message == (
        f"{cert_dir.root / 'ca.pem'} is owned by uid {NOBODY}, not by this user (uid 0) or root: "
        "refusing to use it"
    )


def test_ok_a_cert_dir_reached_through_a_symlink_is_used(tmp_path: Path, ca: Ca) -> None:
    """The cert dir itself may be a symbolic link (/etc/sielum -> /srv/sielum): what counts
    is the directory it names."""
    cert_dir, key = _enrolled(tmp_path, ca)
    link = tmp_path / "link"
    link.symlink_to(cert_dir.root)
    assert CertDir(link).load_locked().key_pem == private_pem(key)


def test_read_uses_a_staged_certificate_and_writes_nothing(tmp_path: Path, ca: Ca) -> None:
    cert_dir, _ = _enrolled(tmp_path, ca)
    root = cert_dir.root
    new_key = ec.generate_private_key(ec.SECP256R1())
    new_pem = ca.issue(new_key)
    # Between commit_renewal's two renames, as a reader without the lock may see it.
    (root / "renew.pem.pending").write_bytes(new_pem)
    (root / "device.key").write_bytes(private_pem(new_key))
    before = _files(cert_dir)
    assert ".lock" not in before
    stored = cert_dir.read()
    assert stored.certificate_pem == new_pem
    assert _files(cert_dir) == before  # nothing renamed, no lock file made


def test_read_takes_a_shared_lock_when_it_can(tmp_path: Path, ca: Ca) -> None:
    cert_dir, key = _enrolled(tmp_path, ca)
    with cert_dir.lock():  # makes .lock; a writer holds it exclusively
        pass
    assert cert_dir.read().key_pem == private_pem(key)
    (cert_dir.root / ".lock").chmod(0o000)  # root opens it anyway; others could not
    assert cert_dir.read().key_pem == private_pem(key)


def test_fail_read_of_files_that_never_belong_together(tmp_path: Path, ca: Ca) -> None:
    cert_dir, _ = _enrolled(tmp_path, ca)
    other = ec.generate_private_key(ec.SECP256R1())
    # A certificate for the key on disk, but of another device: read again, then refused.
    key = serialization.load_pem_private_key(
        (cert_dir.root / "device.key").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    (cert_dir.root / "device.pem").write_bytes(ca.issue(key, device_id="dev-2"))
    with pytest.raises(CertDirError) as caught:
        cert_dir.read()
    assert caught.value.message == (
        f"{cert_dir.root / 'device.pem'} is not the certificate of device dev-1 that "
        f"{cert_dir.root / 'agent.json'} names: re-enroll with `sielum-agent enroll --force`"
    )
    (cert_dir.root / "device.pem").write_bytes(ca.issue(other))
    with pytest.raises(CertDirError, match="does not match"):
        cert_dir.read()


def test_renewal_keeps_the_group_read_bit_an_operator_gave_the_key(tmp_path: Path, ca: Ca) -> None:
    cert_dir, _ = _enrolled(tmp_path, ca)
    key_path = cert_dir.root / "device.key"
    monitoring_gid = 65534
    os.chown(key_path, -1, monitoring_gid)
    key_path.chmod(0o640)
    new_key = ec.generate_private_key(ec.SECP256R1())
    cert_dir.stage_renewal_key(new_key)
    cert_dir.commit_renewal(ca.issue(new_key))
    info = key_path.stat()
    assert key_path.read_bytes() == private_pem(new_key)
    assert (info.st_mode & 0o777, info.st_gid) == (0o640, monitoring_gid)

    # A key the group may not read stays 0600 after the next renewal.
    key_path.chmod(0o600)
    newer = ec.generate_private_key(ec.SECP256R1())
    cert_dir.stage_renewal_key(newer)
    cert_dir.commit_renewal(ca.issue(newer))
    assert key_path.stat().st_mode & 0o777 == 0o600
