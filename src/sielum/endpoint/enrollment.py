"""The agent's flows: enroll with a token, report status by Heartbeat, renew the certificate."""

from __future__ import annotations

import hmac
import platform
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import TypeVar

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf.timestamp_pb2 import Timestamp

from sielum.agent.v1 import agent_pb2, agent_pb2_grpc
from sielum.ca.profile import fingerprint, role_of
from sielum.endpoint import pinning, reach
from sielum.endpoint.address import ServerAddress, parse_server, resolve_api_endpoint
from sielum.endpoint.certdir import (
    PENDING_KEY_FILE,
    STATE_FILE,
    AgentState,
    CertDir,
    StoredEnrollment,
    same_key,
)
from sielum.endpoint.connection import AgentConnection
from sielum.endpoint.errors import (
    AgentError,
    AlreadyEnrolledError,
    DeviceRefusedError,
    EnrollmentDeniedError,
    NotEnrolledError,
    RenewedElsewhereError,
    ServerAnswerError,
    ServerBusyError,
    ServerUnreachableError,
    TokenRefusedError,
    WrongPortError,
)
from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from sielum.tokens import Secret

DEFAULT_TIMEOUT = 30.0
_Reply = TypeVar("_Reply")


@dataclass(frozen=True)
class EnrollOptions:
    server: ServerAddress
    token: Secret
    pin: bytes
    cert_dir: CertDir
    force: bool = False
    hostname: str = field(default_factory=platform.node)
    facts: Mapping[str, str] = field(default_factory=lambda: default_facts())
    timeout: float = DEFAULT_TIMEOUT
    # A token that requires approval: called once with the request id when the server
    # first says the enrollment waits, then the agent asks again with the same key,
    # every approval_backoff[0] seconds at first, doubling up to approval_backoff[1].
    on_pending: Callable[[str], None] | None = None
    approval_backoff: tuple[float, float] = (2.0, 30.0)
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class PreviousEnrollment:
    """What became of the enrollment `enroll --force` replaced."""

    device_id: str  # "" when the cert dir no longer says which device it was
    ended: bool  # the server revoked it at the device's own request (Unenroll)
    reason: str = ""  # why it could not be ended


@dataclass(frozen=True)
class EnrollResult:
    device_id: str
    api_endpoint: str
    not_after: datetime
    previous: PreviousEnrollment | None = None


@dataclass(frozen=True)
class Status:
    device_id: str
    api_endpoint: str
    server_time: datetime
    not_after: datetime
    renew_after: datetime
    # What the server asks agents to heartbeat at; None from a server that says nothing.
    heartbeat_interval: timedelta | None = None

    @property
    def renewal_due(self) -> bool:
        return self.server_time >= self.renew_after


@dataclass(frozen=True)
class RenewResult:
    device_id: str
    not_after: datetime
    serial: str


def default_facts() -> dict[str, str]:
    """What an operator wants to see about an endpoint in `sielum-admin devices get`."""
    try:
        version = metadata.version("sielum")
    except metadata.PackageNotFoundError:
        version = "unknown"
    facts = {
        "os": platform.system().lower(),
        "os.release": platform.release(),
        "arch": platform.machine(),
        "agent.version": version,
    }
    return {key: value[:1024] for key, value in facts.items() if value}


def make_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey) -> str:
    # The server copies nothing from the CSR but the key, so the subject is a placeholder.
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sielum-agent")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def check_issued(
    certificate_pem: str,
    ca_pem: str,
    *,
    pin: bytes,
    key: ec.EllipticCurvePrivateKey,
    device_id: str,
    now: datetime | None = None,
) -> tuple[x509.Certificate, x509.Certificate]:
    """Checks the server's answer: CA equals the pin, certificate chains to it, carries our key.

    Returns (certificate, ca). Raises ServerAnswerError; nothing is written before this passes.
    """
    now = now if now is not None else datetime.now(UTC)
    try:
        ca = x509.load_pem_x509_certificate(ca_pem.encode("ascii"))
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise ServerAnswerError(
            "the server's answer holds a certificate that cannot be parsed"
        ) from None
    if not hmac.compare_digest(pinning.sha256_der(ca), pin):
        raise ServerAnswerError(
            f"the server answered with a CA ({fingerprint(ca)}) other than the pinned one; "
            "nothing was written"
        )
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ServerAnswerError(
            "the certificate the server sent is not signed by the pinned CA; nothing was written"
        ) from None
    if not same_key(key, certificate):
        raise ServerAnswerError(
            "the certificate the server sent is not for this agent's key; nothing was written"
        )
    if role_of(certificate) != ("device", device_id):
        raise ServerAnswerError(
            f"the certificate the server sent does not name device {device_id}; nothing was written"
        )
    skew = pinning.CLOCK_SKEW
    if now + skew < certificate.not_valid_before_utc or certificate.not_valid_after_utc <= now:
        raise ServerAnswerError(
            "the certificate the server sent is not valid now "
            f"({certificate.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
            f"{certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}); check this machine's clock"
        )
    return certificate, ca


def enroll(options: EnrollOptions) -> EnrollResult:
    """The enrollment, step by step (README, "Enrolling an agent"): pin, key, Enroll, check, write.

    With --force over an existing enrollment, the new one is made and stored first;
    only then is the old one ended, with its own certificate (AgentService.Unenroll),
    so a failed re-enrollment leaves the old one working.
    """
    cert_dir = options.cert_dir
    # The cert dir is checked before the server is dialled: a token use spent on a
    # certificate that cannot be stored would be a use wasted.
    cert_dir.prepare()
    with cert_dir.lock():
        replaced: StoredEnrollment | PreviousEnrollment | None = None
        if cert_dir.is_enrolled():
            if not options.force:
                raise AlreadyEnrolledError(
                    f"{cert_dir.root} already holds an enrollment; it was kept "
                    "(pass --force to enroll again with a new key)"
                )
            replaced = _previous_enrollment(cert_dir)
        pinned = pinning.probe(options.server, options.pin, timeout=options.timeout)
        ca_pem = pinned.ca.public_bytes(serialization.Encoding.PEM)

        key = cert_dir.pending_key()
        retried_key = key is not None
        if key is None:
            key = make_key()
            cert_dir.write_pending_key(key)
        try:
            reply = _enroll_waiting(options, ca_pem, key)
        except EnrollmentDeniedError:
            # That key is refused for good; the next run asks anew with a new key.
            cert_dir.discard(PENDING_KEY_FILE)
            raise
        except _KeyTakenError:
            if not retried_key:
                raise ServerAnswerError(
                    "the server says this new key is enrolled already; try again"
                ) from None
            # The leftover key belongs to an enrollment under another token: it is
            # of no use to this one, so start over with a fresh key.
            key = make_key()
            cert_dir.write_pending_key(key)
            reply = _enroll_waiting(options, ca_pem, key)

        certificate, _ = check_issued(
            reply.certificate_pem,
            reply.ca_certificate_pem,
            pin=options.pin,
            key=key,
            device_id=reply.device_id,
        )
        try:
            api = resolve_api_endpoint(reply.api_endpoint, options.server)
        except ValueError as error:
            raise ServerAnswerError(f"the server's answer is unusable: {error}") from None
        state = AgentState(
            device_id=reply.device_id,
            api_endpoint=api.target,
            server=options.server.url,
            enrolled_at=datetime.now(UTC),
            ca_fingerprint=fingerprint(pinned.ca),
        )
        cert_dir.save_enrollment(state, reply.certificate_pem.encode("ascii"), ca_pem)
    previous = (
        end_enrollment(replaced, reply.device_id, timeout=options.timeout)
        if isinstance(replaced, StoredEnrollment)
        else replaced
    )
    return EnrollResult(
        device_id=reply.device_id,
        api_endpoint=api.target,
        not_after=certificate.not_valid_after_utc,
        previous=previous,
    )


# Ending the replaced enrollment is a courtesy after the real work is done: an old
# server that does not answer must not hold the new enrollment up for long.
UNENROLL_TIMEOUT = 10.0


def _previous_enrollment(cert_dir: CertDir) -> StoredEnrollment | PreviousEnrollment:
    """The enrollment about to be replaced, or what can still be said of it."""
    try:
        return cert_dir.load()
    except AgentError as error:
        try:
            device_id = AgentState.from_json(cert_dir.path(STATE_FILE).read_bytes()).device_id
        except (OSError, ValueError, KeyError):
            device_id = ""
        return PreviousEnrollment(device_id=device_id, ended=False, reason=error.message)


def end_enrollment(
    stored: StoredEnrollment, new_device_id: str, timeout: float = DEFAULT_TIMEOUT
) -> PreviousEnrollment | None:
    """Unenroll the stored enrollment with its own certificate; never raises.

    A device that is already revoked counts as ended; anything else that keeps the
    call from succeeding is returned as the reason, for the operator to revoke it.
    None when the new enrollment is the same device, so nothing was replaced.
    """
    device_id = stored.state.device_id
    if device_id == new_device_id:
        return None
    try:
        _check_not_expired(stored)
        reply = _call_agent(
            stored,
            lambda stub: stub.Unenroll(
                agent_pb2.UnenrollRequest(), timeout=min(timeout, UNENROLL_TIMEOUT)
            ),
        )
    except DeviceRefusedError as error:
        if error.message.endswith("device has been revoked"):
            return PreviousEnrollment(device_id=device_id, ended=True, reason="already revoked")
        return PreviousEnrollment(device_id=device_id, ended=False, reason=error.message)
    except AgentError as error:
        return PreviousEnrollment(device_id=device_id, ended=False, reason=error.message)
    if reply.device_id != device_id:
        return PreviousEnrollment(
            device_id=device_id,
            ended=False,
            reason=f"the server ended device {reply.device_id} instead",
        )
    return PreviousEnrollment(device_id=device_id, ended=True)


@dataclass(frozen=True)
class Unenrolled:
    """What `sielum-agent unenroll` did."""

    device_id: str
    already_revoked: bool  # an admin (or an earlier unenroll) revoked it first


def unenroll(cert_dir: CertDir, timeout: float = DEFAULT_TIMEOUT) -> Unenrolled:
    """End this device's enrollment with its own certificate (AgentService.Unenroll).

    For decommissioning: the server revokes the device (audited as device.unenroll);
    the cert dir is left as it is, for the caller to remove once this has succeeded.
    A device that is already revoked counts as ended; any other failure raises, so
    that nobody removes the key of a device the server still takes for active.
    """
    stored = cert_dir.read()
    device_id = stored.state.device_id
    try:
        reply = _call_agent(
            stored,
            lambda stub: stub.Unenroll(agent_pb2.UnenrollRequest(), timeout=timeout),
        )
    except DeviceRefusedError as error:
        if error.message.endswith("device has been revoked"):
            return Unenrolled(device_id=device_id, already_revoked=True)
        raise
    if reply.device_id != device_id:
        raise ServerAnswerError(f"the server ended device {reply.device_id}, not {device_id}")
    return Unenrolled(device_id=device_id, already_revoked=False)


class _KeyTakenError(Exception):
    """ALREADY_EXISTS: the key is enrolled as another device."""


class _PendingError(Exception):
    """FAILED_PRECONDITION "pending approval: request <id>": an admin has yet to decide."""

    def __init__(self, request_id: str) -> None:
        super().__init__(request_id)
        self.request_id = request_id


_PENDING = re.compile(r"pending approval: request ([0-9a-f-]{36})")


def _enroll_waiting(
    options: EnrollOptions, ca_pem: bytes, key: ec.EllipticCurvePrivateKey
) -> enroll_pb2.EnrollResponse:
    """Enroll, and while the enrollment waits for an admin, ask again with the same key.

    The key stays in the cert dir as the pending key meanwhile, so an agent stopped
    while it waits asks as the same request when run again. Once waiting, an
    unreachable or busy server is asked again too; a denial, or a token revoked or
    expired meanwhile, ends the wait with its error.
    """
    delay, longest = options.approval_backoff
    waiting = ""
    while True:
        try:
            return _call_enroll(options, ca_pem, key)
        except _PendingError as pending:
            if pending.request_id != waiting:
                waiting = pending.request_id
                if options.on_pending is not None:
                    options.on_pending(waiting)
        except (ServerUnreachableError, ServerBusyError):
            if not waiting:
                raise
        # Jittered, so that a fleet started together does not ask in step.
        options.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - not a secret
        delay = min(delay * 2, longest)


def _call_enroll(
    options: EnrollOptions, ca_pem: bytes, key: ec.EllipticCurvePrivateKey
) -> enroll_pb2.EnrollResponse:
    request = enroll_pb2.EnrollRequest(
        token=options.token.reveal(),
        csr_pem=make_csr(key),
        hostname=options.hostname,
        facts=dict(options.facts),
    )
    # The only root is the pinned CA: whatever answers on this second connection
    # must hold a certificate from it for this very host name.
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(options.server.target, credentials) as channel:
        stub = enroll_pb2_grpc.EnrollServiceStub(channel)
        try:
            reply: enroll_pb2.EnrollResponse = stub.Enroll(request, timeout=options.timeout)
        except grpc.RpcError as error:
            code, details = _status(error)
            if code is grpc.StatusCode.ALREADY_EXISTS:
                raise _KeyTakenError from None
            if code is grpc.StatusCode.UNAUTHENTICATED:
                raise TokenRefusedError(
                    f"token refused: {details or 'enrollment token is invalid'}"
                ) from None
            if code is grpc.StatusCode.FAILED_PRECONDITION:
                pending = _PENDING.fullmatch(details)
                if pending is not None:
                    raise _PendingError(pending.group(1)) from None
            if code is grpc.StatusCode.PERMISSION_DENIED and details == "enrollment denied":
                raise EnrollmentDeniedError("enrollment denied") from None
            if code is grpc.StatusCode.PERMISSION_DENIED:
                raise TokenRefusedError(f"token refused: {details}") from None
            ca = x509.load_pem_x509_certificate(ca_pem)
            raise _common_error(code, details, options.server, ca, "enroll") from None
    return reply


def status(
    cert_dir: CertDir,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    allow_expired: bool = False,
    connection: AgentConnection | None = None,
) -> Status:
    """Heartbeat over mTLS with the stored certificate.

    An expired certificate is refused here (exit 9) unless allow_expired: the long-running
    agent sends it anyway, since only the server may say the device is done for (this
    machine's clock may be the one that is wrong). With connection, the call goes over
    the connection it keeps (`sielum-agent run`); without, over one of its own.
    """
    # Read without writing anything, the lock file included: a monitoring user
    # who may only read the cert dir can run status.
    stored = cert_dir.read()
    if not allow_expired:
        _check_not_expired(stored)
    reply = _call_agent(
        stored,
        lambda stub: stub.Heartbeat(agent_pb2.HeartbeatRequest(), timeout=timeout),
        connection,
    )
    if reply.device_id != stored.state.device_id:
        raise ServerAnswerError(
            f"the server knows this certificate as device {reply.device_id}, "
            f"not {stored.state.device_id}"
        )
    return Status(
        device_id=reply.device_id,
        api_endpoint=stored.state.api_endpoint,
        server_time=_datetime(reply.server_time),
        not_after=_datetime(reply.not_after),
        renew_after=_datetime(reply.renew_after),
        heartbeat_interval=(
            reply.heartbeat_interval.ToTimedelta() if reply.HasField("heartbeat_interval") else None
        ),
    )


def renew(
    cert_dir: CertDir,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    allow_expired: bool = False,
    expected_serial: int | None = None,
    connection: AgentConnection | None = None,
) -> RenewResult:
    """New key, RenewCertificate, check, swap; the old key and certificate stay on any failure.

    With expected_serial, renews only the certificate the caller scheduled: if another
    process renewed it meanwhile, raises RenewedElsewhereError and changes nothing.
    """
    cert_dir.require_dir()
    with cert_dir.lock():
        stored = cert_dir.load()
        if expected_serial is not None and stored.certificate.serial_number != expected_serial:
            raise RenewedElsewhereError(
                f"the certificate in {cert_dir.root} was renewed by another process"
            )
        if not allow_expired:
            _check_not_expired(stored)
        key = make_key()
        cert_dir.stage_renewal_key(key)
        try:
            request = agent_pb2.RenewCertificateRequest(csr_pem=make_csr(key))
            reply = _call_agent(
                stored,
                lambda stub: stub.RenewCertificate(request, timeout=timeout),
                connection,
            )
            certificate, _ = check_issued(
                reply.certificate_pem,
                reply.ca_certificate_pem,
                pin=pinning.sha256_der(stored.ca),
                key=key,
                device_id=stored.state.device_id,
            )
            cert_dir.commit_renewal(reply.certificate_pem.encode("ascii"))
        except BaseException:
            cert_dir.discard_renewal()
            raise
    return RenewResult(
        device_id=stored.state.device_id,
        not_after=certificate.not_valid_after_utc,
        serial=format(certificate.serial_number, "x"),
    )


def _check_not_expired(stored: StoredEnrollment) -> None:
    not_after = stored.certificate.not_valid_after_utc
    if not_after <= datetime.now(UTC):
        raise DeviceRefusedError(
            f"the device certificate expired at {not_after:%Y-%m-%dT%H:%M:%SZ}: "
            "enroll again with a new token and --force"
        )


def _call_agent(
    stored: StoredEnrollment,
    call: Callable[[agent_pb2_grpc.AgentServiceStub], _Reply],
    connection: AgentConnection | None = None,
) -> _Reply:
    try:
        api = parse_server(stored.state.api_endpoint)
    except AgentError:
        raise NotEnrolledError(
            f"agent.json names an unusable API endpoint {stored.state.api_endpoint!r}"
        ) from None
    own = AgentConnection() if connection is None else connection
    try:
        channel = own.channel(api.target, stored.ca_pem, stored.key_pem, stored.certificate_pem)
        try:
            return call(agent_pb2_grpc.AgentServiceStub(channel))
        except grpc.RpcError as error:
            code, details = _status(error)
            own.failed(code)
            if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                # The enroll port asks for no client certificate, so it refuses
                # every device call: that is a wrong address, not a refused device.
                wrong = reach.explain_failure(api, stored.ca, "api", details, caller="device")
                if isinstance(wrong, WrongPortError):
                    raise wrong from None
                raise DeviceRefusedError(f"the server refused this device: {details}") from None
            raise _common_error(code, details, api, stored.ca, "api") from None
    finally:
        if connection is None:
            own.close()


def _status(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = error.details() if isinstance(error, grpc.Call) else ""
    # One line on stderr: gRPC's transport details can span several.
    return code, re.sub(r"\s+", " ", details or "").strip()


def _common_error(
    code: grpc.StatusCode,
    details: str,
    server: ServerAddress,
    ca: x509.Certificate,
    want: reach.Port,
) -> AgentError:
    if code is grpc.StatusCode.UNAVAILABLE:
        # gRPC's text is the same for a closed port and for a refused handshake:
        # look again to say which, in the words enroll uses (agent/reach.py).
        found = reach.explain_failure(server, ca, want, details, caller="device")
        return found or reach.unreachable(server, details)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return reach.unreachable(server, "no answer in time")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ServerBusyError(f"the server asks this client to slow down: {details}")
    return ServerAnswerError(f"the server refused the request ({code.name}): {details}")


def _datetime(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)
