"""The long-running agent's one connection to the API port, kept open between heartbeats."""

from __future__ import annotations

import grpc

# Codes after which the connection itself may be dead (a NAT that forgot it, a server
# that went away without a word): the next call opens a new one rather than wait on it.
_SUSPECT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class AgentConnection:
    """One gRPC channel for the stored pair and endpoint, reused while they stay the same.

    A new connection costs the server about twice what the heartbeat on it costs (a
    TCP and TLS handshake: bench/RESULTS.md, "Fleet scale"), so `sielum-agent run`
    keeps the one it has; the server keeps an idle connection open a little longer
    than the heartbeat interval it advises (devices/policy.py connection_idle_limit).
    A renewal changes the pair, so the next call opens a connection with the new
    certificate and the old one is closed. After a call that failed in a way a
    dead connection would (UNAVAILABLE, DEADLINE_EXCEEDED), it is dropped too.
    """

    def __init__(self) -> None:
        self._key: tuple[str, bytes, bytes, bytes] | None = None
        self._channel: grpc.Channel | None = None
        self.opened = 0  # connections opened so far (tests and the log read it)

    def channel(self, target: str, ca_pem: bytes, key_pem: bytes, chain_pem: bytes) -> grpc.Channel:
        key = (target, ca_pem, key_pem, chain_pem)
        if self._channel is None or key != self._key:
            self.close()
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca_pem, private_key=key_pem, certificate_chain=chain_pem
            )
            self._channel = grpc.secure_channel(target, credentials)
            self._key = key
            self.opened += 1
        return self._channel

    def failed(self, code: grpc.StatusCode) -> None:
        """After a failed call: drop the connection if the failure may have been its own."""
        if code in _SUSPECT:
            self.close()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._key = None
