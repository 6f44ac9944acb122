"""Why a Sielum server cannot be used at an address, in one wording for the agent and the admin CLI.

A gRPC failure says "failed to connect to all addresses; last error: UNAVAILABLE:
ipv4:...: Socket closed", whatever went wrong. When a call fails, the clients
look again with a plain TCP connection and a TLS handshake, and say what they
found: "cannot reach HOST:PORT: connection refused", a failed handshake, or the
wrong one of Sielum's ports. The ports tell themselves apart in the handshake:
the API port asks for a client certificate (mTLS), the enroll port does not, and
the dashboard port speaks HTTP/1.1 for browsers, not the HTTP/2 gRPC needs (ALPN).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from sielum.endpoint.address import ServerAddress
from sielum.endpoint.errors import (
    AgentError,
    NameMismatchError,
    ServerUnreachableError,
    WrongPortError,
)

DEFAULT_ENROLL_PORT = 8443
DEFAULT_API_PORT = 8444
# Looking again after a failure is a courtesy to the reader: never for long.
PROBE_TIMEOUT = 5.0
DER_ENCODING = 2  # _ssl.ENCODING_DER, not exported publicly before Python 3.13
_CERTIFICATE_REQUEST = 13  # the TLS handshake message type

Port = Literal["enroll", "api", "dashboard"]
_GRPC_ALPN = "h2"


def cannot_reach(target: str, reason: str) -> str:
    """The one wording of an unreachable server, for every command of every client."""
    return f"cannot reach {target}: {reason}"


def wrong_port_message(target: str, found: Port, caller: str = "admin", want: Port = "api") -> str:
    """What to say when the address is another of Sielum's ports than the one wanted.

    caller names who makes the calls the API port takes: "admin" or "device";
    want is the port the call needed.
    """
    if found == "dashboard":
        if want == "enroll":
            instead = (
                f"enroll on the enroll port, {DEFAULT_ENROLL_PORT} unless the server was "
                "started with another --enroll-addr"
            )
        else:
            instead = (
                f"{caller} calls go to the API port, {DEFAULT_API_PORT} unless the server "
                "was started with another --api-addr"
            )
        return (
            f"{target} is Sielum's dashboard port (web pages for a browser, not gRPC): "
            f"open https://{target}/ in a browser, or {instead}"
        )
    if found == "api":
        return (
            f"{target} is Sielum's API port (it asks for a client certificate); "
            f"enroll on the enroll port instead, {DEFAULT_ENROLL_PORT} unless the server "
            "was started with another --enroll-addr"
        )
    return (
        f"{target} is Sielum's enroll port (it asks for no client certificate); "
        f"{caller} calls go to the API port, {DEFAULT_API_PORT} unless the server was "
        "started with another --api-addr"
    )


def names_host(certificate: x509.Certificate, host: str) -> bool:
    """True if a DNS or IP SAN covers host (one left-most wildcard label allowed)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return address in san.get_values_for_type(x509.IPAddress)
    wanted = host.rstrip(".").lower()
    for name in san.get_values_for_type(x509.DNSName):
        pattern = name.rstrip(".").lower()
        if pattern == wanted:
            return True
        if pattern.startswith("*.") and "." in wanted:
            first, rest = wanted.split(".", 1)
            if first and rest == pattern[2:]:
                return True
    return False


def reason_of(error: BaseException) -> str:
    """A short lower-case reason: "connection refused", "name not found (...)", ..."""
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason).lower().replace("_", " ")
    if isinstance(error, socket.gaierror):
        return f"name not found ({error.strerror})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


def unverified_context() -> ssl.SSLContext:
    """A client context that trusts nothing: the caller checks the chain itself."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    return context


@contextlib.contextmanager
def tls_connection(
    server: ServerAddress, timeout: float, context: ssl.SSLContext
) -> Iterator[ssl.SSLSocket]:
    """A completed TLS handshake with server; ServerUnreachableError says why there is none."""
    try:
        raw = socket.create_connection((server.host, server.port), timeout=timeout)
    except TimeoutError:
        raise ServerUnreachableError(
            cannot_reach(server.target, f"connection timed out after {timeout:g}s")
        ) from None
    except OSError as error:
        raise ServerUnreachableError(cannot_reach(server.target, reason_of(error))) from None
    with raw:
        try:
            # server_hostname sets SNI so a server with several names picks the right one.
            tls = context.wrap_socket(raw, server_hostname=server.host)
        except TimeoutError:
            raise ServerUnreachableError(
                f"TLS handshake with {server.target} timed out after {timeout:g}s"
            ) from None
        except (ssl.SSLError, OSError) as error:
            raise ServerUnreachableError(
                f"TLS handshake with {server.target} failed: {reason_of(error)}"
            ) from None
        with tls:
            yield tls


def unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """The server's chain as sent (DER), leaf first."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:  # Python 3.13+
        items = public()
    else:  # Python 3.10-3.12 expose the same call on the private SSLObject only
        sslobj = tls._sslobj  # type: ignore[attr-defined]
        items = sslobj.get_unverified_chain()
    result: list[bytes] = []
    for item in items or ():
        result.append(item if isinstance(item, bytes) else item.public_bytes(DER_ENCODING))
    return result


@dataclass(frozen=True)
class PortProbe:
    """What one TLS handshake told about a port."""

    port: Port | None  # None: not a port of the Sielum behind `ca`, or no way to tell
    # The server's certificate, when the expected CA issued it.
    leaf: x509.Certificate | None = None
    # The server chose HTTP/2 (ALPN "h2"), which gRPC needs; False for a web server.
    http2: bool = True


def not_grpc_message(target: str) -> str:
    """An HTTPS server that is not a gRPC one, and not known as Sielum's dashboard."""
    return (
        f"{target} answers HTTPS but not gRPC (it declined HTTP/2): it is a web server, "
        "perhaps Sielum's dashboard (open it in a browser); use the enroll or API port"
    )


def probe_port(
    server: ServerAddress, ca: x509.Certificate, timeout: float = PROBE_TIMEOUT
) -> PortProbe:
    """Which of Sielum's ports server is: the API port asks for a client certificate.

    Only a server whose certificate the expected CA issued is named a Sielum port.
    The handshake sends no client certificate and no application byte. Raises
    ServerUnreachableError when no handshake completes.
    """
    seen: list[int] = []
    context = unverified_context()
    # The one way to see the server's CertificateRequest from Python is the
    # context's message callback (CPython 3.8+; private, so looked up, not assumed).
    if not hasattr(context, "_msg_callback"):  # pragma: no cover - other interpreters
        return PortProbe(None)

    def on_message(
        conn: object,
        direction: str,
        version: object,
        content_type: object,
        kind: object,
        data: bytes,
    ) -> None:
        if direction == "read" and kind == _CERTIFICATE_REQUEST:
            seen.append(_CERTIFICATE_REQUEST)

    context._msg_callback = on_message
    # Offer HTTP/1.1 too, so that a web server (the dashboard) says what it is.
    context.set_alpn_protocols([_GRPC_ALPN, "http/1.1"])
    with tls_connection(server, timeout, context) as tls:
        chain = unverified_chain(tls)
        http2 = tls.selected_alpn_protocol() == _GRPC_ALPN
    try:
        leaf = x509.load_der_x509_certificate(chain[0])
        leaf.verify_directly_issued_by(ca)
    except (IndexError, ValueError, TypeError, InvalidSignature):
        return PortProbe(None, http2=http2)
    if not http2:
        return PortProbe("dashboard", leaf, http2=False)
    return PortProbe("api" if seen else "enroll", leaf)


def explain_failure(
    server: ServerAddress,
    ca: x509.Certificate | None,
    want: Port,
    details: str,
    timeout: float = PROBE_TIMEOUT,
    caller: str = "admin",
) -> AgentError | None:
    """After a failed call: the server unreachable (and why), or the wrong port; else None.

    details is gRPC's text, used only when looking again finds nothing wrong with
    the connection (the server went away and came back, say).
    """
    if ca is None:
        return None
    try:
        probe = probe_port(server, ca, timeout)
    except ServerUnreachableError as error:
        return error
    if probe.port is not None and probe.port != want:
        return WrongPortError(wrong_port_message(server.target, probe.port, caller, want))
    if not probe.http2:
        return WrongPortError(not_grpc_message(server.target))
    if probe.leaf is not None and not names_host(probe.leaf, server.host):
        return NameMismatchError(name_mismatch_message(server.host))
    return None


def name_mismatch_message(host: str) -> str:
    """The server's certificate does not name the host the client dialled: the fix."""
    return (
        f"the server's certificate does not name {host}: add the name with "
        f"`sielum-server renew-server-cert --data-dir DIR --san {host}` on the server "
        "(a running server takes it within 10 seconds), or connect with a name it has"
    )


def unreachable(server: ServerAddress, details: str) -> ServerUnreachableError:
    """A connection gRPC could not make though a plain one works: gRPC's reason, on one line."""
    return ServerUnreachableError(cannot_reach(server.target, details or "unavailable"))
