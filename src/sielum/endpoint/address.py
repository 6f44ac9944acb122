"""Server addresses as operators write them: https://host[:port], host:port, IPv6 in brackets."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from sielum.endpoint.errors import UsageError

DEFAULT_HTTPS_PORT = 443
_HELP = "use https://HOST[:PORT] or HOST:PORT (IPv6 in brackets: https://[::1]:8443)"


@dataclass(frozen=True)
class ServerAddress:
    """A host and a port; host is bare (no brackets), as TLS and SAN checks want it."""

    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def target(self) -> str:
        """host:port as gRPC and sockets want it: [v6]:port for IPv6."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.target}"


def parse_server(text: str, *, default_port: int = DEFAULT_HTTPS_PORT) -> ServerAddress:
    """Parses --server; raises UsageError saying what is wrong and what is accepted."""
    value = text.strip()
    if not value:
        raise UsageError(f"--server is empty: {_HELP}")
    scheme, sep, _ = value.partition("://")
    if sep:
        if scheme.lower() != "https":
            raise UsageError(f"--server {value!r}: only https:// is supported ({_HELP})")
    else:
        if value.count(":") > 1 and not value.startswith("["):
            # "::1:8443" cannot be split into host and port unambiguously.
            raise UsageError(f"--server {value!r}: put an IPv6 address in brackets ({_HELP})")
        value = "https://" + value
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as error:
        raise UsageError(f"--server {text.strip()!r}: {error} ({_HELP})") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"--server {text.strip()!r} has a path; {_HELP}")
    if parts.username is not None or parts.password is not None:
        raise UsageError(f"--server {text.strip()!r} must not carry credentials")
    host = parts.hostname
    if not host:
        raise UsageError(f"--server {text.strip()!r} has no host; {_HELP}")
    if port == 0:
        raise UsageError(f"--server {text.strip()!r}: port 0 is not a port")
    return ServerAddress(host=host, port=port if port is not None else default_port)


def resolve_api_endpoint(endpoint: str, enrolled_with: ServerAddress) -> ServerAddress:
    """EnrollResponse.api_endpoint as an address; ':port' means the host we enrolled with."""
    value = endpoint.strip()
    if not value:
        raise ValueError("the server sent no API endpoint")
    if value.startswith(":"):
        port_text = value[1:]
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"API endpoint {value!r} has no valid port")
        return ServerAddress(host=enrolled_with.host, port=int(port_text))
    try:
        address = parse_server(value, default_port=0)
    except UsageError as error:
        raise ValueError(error.message) from None
    if address.port == 0:
        raise ValueError(f"API endpoint {value!r} has no port")
    return address
