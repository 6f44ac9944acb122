"""The agent's failures: one class per thing an operator must tell apart, each with an exit code."""

from __future__ import annotations

# Exit codes are a public contract: scripts and configuration management branch
# on them. They are listed in `sielum-agent --help` and in docs/cli.md, and
# tests/e2e/test_agent_cli.py asserts each one.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PIN_MISMATCH = 3
EXIT_TOKEN_REFUSED = 4
EXIT_UNREACHABLE = 5
EXIT_CERT_DIR = 6
EXIT_ALREADY_ENROLLED = 7
EXIT_NOT_ENROLLED = 8
EXIT_DEVICE_REFUSED = 9
EXIT_NAME_MISMATCH = 10


class AgentError(Exception):
    """Base of every agent failure; the message is one line, safe to print, never a secret."""

    exit_code = EXIT_FAILED
    # A word for scripts, in the --json error object (sielum/cli/conventions.py).
    code = "failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(AgentError):
    """A flag or input is malformed: --server, --ca-fingerprint, a mistyped token."""

    exit_code = EXIT_USAGE
    code = "usage"


class PinMismatchError(AgentError):
    """The server could not prove it holds a certificate from the pinned CA: nothing was sent."""

    exit_code = EXIT_PIN_MISMATCH
    code = "pin_mismatch"


class NameMismatchError(AgentError):
    """The server's certificate, from the right CA, does not name the host dialled.

    Not a pin mismatch (exit 3): the server is the pinned one, but the name the
    client used is missing from its certificate; the fix is on the server
    (sielum-server renew-server-cert --data-dir DIR --san NAME) or in --server.
    """

    exit_code = EXIT_NAME_MISMATCH
    code = "name_mismatch"


class TokenRefusedError(AgentError):
    """The server refused the token: invalid, expired, exhausted or revoked."""

    exit_code = EXIT_TOKEN_REFUSED
    code = "token_refused"


class EnrollmentDeniedError(TokenRefusedError):
    """An admin denied this machine's enrollment request (a token that requires approval)."""

    code = "denied"


class ServerUnreachableError(AgentError):
    """No connection (refused, timed out, name not found, TLS handshake failed)."""

    exit_code = EXIT_UNREACHABLE
    code = "unreachable"


class WrongPortError(ServerUnreachableError):
    """The address is a Sielum port, but the other one: the API port for enroll, or the reverse.

    Exit code 5 like any server the agent cannot use at that address; the code
    word and the message say which port to use instead.
    """

    code = "wrong_port"


class CertDirError(AgentError):
    """The cert dir cannot be created, written or read."""

    exit_code = EXIT_CERT_DIR
    code = "cert_dir"


class AlreadyEnrolledError(AgentError):
    """The cert dir holds an enrollment already and --force was not given."""

    exit_code = EXIT_ALREADY_ENROLLED
    code = "already_enrolled"


class NotEnrolledError(AgentError):
    """status or renew on a cert dir without a (complete) enrollment."""

    exit_code = EXIT_NOT_ENROLLED
    code = "not_enrolled"


class DeviceRefusedError(AgentError):
    """The server refused this device's certificate: revoked or unknown."""

    exit_code = EXIT_DEVICE_REFUSED
    code = "device_refused"


class ServerAnswerError(AgentError):
    """The server answered, but with an error or with something that fails our checks."""

    exit_code = EXIT_FAILED
    code = "failed"


class ServerBusyError(ServerAnswerError):
    """RESOURCE_EXHAUSTED: the server asks this client to call less often; try again later."""

    code = "busy"


class RenewedElsewhereError(AgentError):
    """The certificate on disk changed since it was read: another process renewed it."""

    code = "renewed_elsewhere"
