"""The dashboard's HTTPS listener: its pages, sign-in and sign-out, and AdminService over Connect.

It runs on grpc.aio's own event loop, in every worker (SO_REUSEPORT shares the
port between them), and it is a transport, not a second application: a
Connect call is authorized by the same Authorizer as a gRPC call, with the
session's admin standing in for a client certificate, then answered by the
same handler through the same Runner
(tests/robust/test_authorization_matrix.py::test_connect_authorization).
"""

from __future__ import annotations

import asyncio
import functools
import html
import inspect
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
from aiohttp import web
from cryptography import x509
from google.protobuf.message import Message

from sielum.core.addresses import split_address
from sielum.core.authorization import Authorizer
from sielum.core.listeners import BoundedSite, HttpLimits
from sielum.core.methods import UnaryMethod
from sielum.core.observer import CallObserver, CallStarted
from sielum.core.runner import Runner
from sielum.dashboard.connect import (
    ConnectError,
    check_browser_request,
    load_json_object,
    parse_request,
    to_json,
)
from sielum.errors import (
    InternalError,
    InvalidArgumentError,
    SielumError,
    UnauthenticatedError,
)
from sielum.identity import CredentialKind, Identity, Role
from sielum.logs import log_event
from sielum.sessions import SIGNED_OUT, DashboardSessions

log = logging.getLogger("sielum.dashboard")
T = TypeVar("T")

COOKIE = "__Host-sielum_session"
SERVICE = "sielum.admin.v1.AdminService"
MAX_BODY_BYTES = 256 * 1024  # as gRPC's message limit
STOP_GRACE = 5.0  # seconds a dashboard request in flight gets at stop
REQUEST_TIMEOUT = 408  # the HTTP status of a body that did not arrive in time
PAGES = ("/", "/settings", "/settings/enrollment-tokens", "/devices", "/devices/pending", "/audit")

# No inline script or style, nothing from elsewhere, never framed, never a form
# submitted anywhere (the pages submit their forms with fetch).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
_STATIC_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".html": "text/html",
}
_HOST = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")


# --- where it listens -------------------------------------------------------------


def own_certificate(cert_path: Path, key_path: Path) -> tuple[ssl.SSLContext, bytes]:
    """A TLS server context for --dashboard-cert and --dashboard-key, and the chain it presents."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path)
        chain = cert_path.read_bytes()
    except (OSError, ssl.SSLError) as error:
        raise InvalidArgumentError(
            f"--dashboard-cert {cert_path} / --dashboard-key {key_path}: {error}"
        ) from None
    return context, chain


def certificate_names(chain_pem: bytes) -> tuple[str, ...]:
    """The DNS names and addresses the leaf certificate of chain_pem is valid for."""
    leaf = x509.load_pem_x509_certificate(chain_pem)
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names = [*sans.get_values_for_type(x509.DNSName)]
    names += [str(address) for address in sans.get_values_for_type(x509.IPAddress)]
    return tuple(names)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def origin_of(url: str) -> str:
    """A URL's origin as browsers send it in Origin: scheme://host[:port], default port left out."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    port = parts.port
    default = 443 if parts.scheme == "https" else 80
    host = _url_host(parts.hostname.lower())
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def _is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "*")  # noqa: S104 - recognizing a wildcard


@dataclass(frozen=True)
class Listener:
    """The dashboard's bound socket, its TLS context, and the names it answers to."""

    sock: socket.socket
    ssl_context: ssl.SSLContext
    port: int
    base_url: str  # what login links start with
    origins: frozenset[str]  # the Origin values of our own pages

    @classmethod
    def open(
        cls,
        addr: str,
        *,
        ssl_context: ssl.SSLContext,
        chain_pem: bytes,
        public_url: str = "",
        reuse_port: bool = False,
    ) -> Listener:
        """Bind addr, to serve TLS with ssl_context; raise OSError if it cannot.

        chain_pem is the certificate chain the context presents: its names are
        the origins the dashboard's pages may come from.
        """
        ssl_context.set_alpn_protocols(["http/1.1"])
        chain = chain_pem
        sock = _bind(addr, reuse_port=reuse_port)
        port = int(sock.getsockname()[1])
        host, _ = split_address(addr)
        names = certificate_names(chain)
        if public_url:
            base_url = public_url.rstrip("/")
        else:
            shown = host
            if _is_wildcard(host):
                public_names = [n for n in names if n != "localhost" and not _is_address(n)]
                shown = public_names[0] if public_names else "localhost"
            base_url = f"https://{_url_host(shown)}" + ("" if port == 443 else f":{port}")
        try:
            origins = {origin_of(base_url)}
        except ValueError:
            raise InvalidArgumentError(
                f"--dashboard-url {public_url!r} is not an https:// URL with a host"
            ) from None
        origins |= {origin_of(f"https://{_url_host(name)}:{port}") for name in names}
        if not _is_wildcard(host):
            origins.add(origin_of(f"https://{_url_host(host)}:{port}"))
        return cls(sock, ssl_context, port, base_url, frozenset(origins))


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _bind(addr: str, *, reuse_port: bool) -> socket.socket:
    """A bound TCP socket for HOST:PORT; asyncio makes it listen.

    Bound here rather than by aiohttp so that the port (0 picks one) is known
    before the first login link is made. reuse_port only in the workers of
    `serve --workers N`: a lone server must fail on a port another one holds,
    not silently share its connections.
    """
    host, port = split_address(addr)
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            None if _is_wildcard(host) else host, port, type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )[0]  # fmt: skip
    except socket.gaierror as error:
        raise OSError(f"cannot listen on {addr} for the dashboard: {error.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
    except OSError as error:
        sock.close()
        reason = (error.strerror or str(error)).lower()
        raise OSError(f"cannot listen on {addr} for the dashboard: {reason}") from None
    return sock


# --- the pages ----------------------------------------------------------------------


@dataclass(frozen=True)
class PageConfig:
    """What the pages are told, in meta tags: nothing secret, all needed for the agent command."""

    ca_fingerprint: str
    enroll_port: int
    enroll_url: str = ""  # empty: https://<the host the browser used>:<enroll_port>

    def enroll_url_for(self, request_host: str | None) -> str:
        if self.enroll_url:
            return self.enroll_url
        host = request_host if request_host and _HOST.match(request_host) else "localhost"
        return f"https://{_url_host(host)}:{self.enroll_port}"


def _load_static() -> dict[str, tuple[bytes, str]]:
    """Every file under static/, by URL path, with its content type (package data)."""
    found: dict[str, tuple[bytes, str]] = {}
    root = resources.files("sielum.dashboard") / "static"

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            else:
                kind = _STATIC_TYPES.get(Path(child.name).suffix)
                if kind is not None:
                    found[f"{prefix}{child.name}"] = (child.read_bytes(), kind)

    walk(root, "")
    return found


# --- the listener ---------------------------------------------------------------------


class Dashboard:
    """The aiohttp application and its runner; start() and stop() on grpc.aio's loop."""

    def __init__(
        self,
        *,
        listener: Listener,
        sessions: DashboardSessions,
        authorizer: Authorizer,
        run: Runner,
        methods: Iterable[UnaryMethod],
        pages: PageConfig,
        limits: HttpLimits | None = None,
        observe: CallObserver | None = None,
        started: CallStarted | None = None,
    ) -> None:
        self.listener = listener
        self._limits = limits or HttpLimits()
        self._observe = observe
        self._started = started
        self._sessions = sessions
        self._authorizer = authorizer
        self._run = run
        self._methods = {method.name: method for method in methods}
        self._pages = pages
        files = _load_static()
        self._shell = files.pop("index.html")[0].decode("utf-8")
        self._login_page = files.pop("login.html")[0]
        self._not_found_page = files.pop("not-found.html")[0]
        self._static = files
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._guard])
        for path in PAGES:
            app.router.add_get(path, self._shell_page)
        app.router.add_get("/login", self._login)
        app.router.add_get("/static/{path:.+}", self._asset)
        app.router.add_post("/session/login", self._sign_in)
        app.router.add_post("/session/logout", self._sign_out)
        app.router.add_post("/session/current", self._current)
        app.router.add_route("*", "/{service}/{method}", self._connect)
        app.router.add_route("*", "/{path:.*}", self._not_found)
        self._app = app
        self._runner: web.AppRunner | None = None
        self.site: BoundedSite | None = None

    async def start(self) -> None:
        runner = web.AppRunner(
            self._app,
            access_log=None,
            shutdown_timeout=STOP_GRACE,
            **self._limits.runner_options(),
        )
        await runner.setup()
        self.site = BoundedSite(
            runner,
            self.listener.sock,
            limits=self._limits,
            ssl_context=self.listener.ssl_context,
            label="dashboard",
        )
        await self.site.start()
        self._runner = runner

    async def stop(self) -> None:
        """Stop taking connections; requests in flight get STOP_GRACE seconds."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.listener.sock.close()

    # Every response passes here: security headers, and errors in Connect's form.

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ConnectError as error:
            response = _error_response(error)
            if error.http_status == REQUEST_TIMEOUT:
                response.force_close()  # "Connection: close": it ends after this answer
        except web.HTTPException as error:
            if request.method == "POST":
                response = _error_response(_http_error(error))
            else:
                response = web.Response(
                    status=error.status, text=error.reason, headers=_allow(error)
                )
        except Exception:
            # The cause stays in the log; the page gets a generic message.
            log.exception("unexpected error in dashboard request %s", request.path)
            response = _error_response(ConnectError(grpc.StatusCode.INTERNAL, "internal error"))
        response.headers.update(SECURITY_HEADERS)
        response.headers["Server"] = "Sielum"
        static = request.path.startswith("/static/") and response.status == 200
        # Pages, answers and sign-in may carry what no cache should keep.
        response.headers["Cache-Control"] = "no-cache" if static else "no-store"
        return response

    # Pages

    async def _shell_page(self, request: web.Request) -> web.Response:
        try:
            host = request.url.host
        except ValueError:  # a Host header yarl cannot parse
            host = None
        page = self._shell.replace(
            "{{ENROLL_URL}}", html.escape(self._pages.enroll_url_for(host))
        ).replace("{{CA_FINGERPRINT}}", html.escape(self._pages.ca_fingerprint))
        return web.Response(text=page, content_type="text/html", charset="utf-8")

    async def _login(self, request: web.Request) -> web.Response:
        return web.Response(body=self._login_page, content_type="text/html", charset="utf-8")

    async def _asset(self, request: web.Request) -> web.Response:
        found = self._static.get(request.match_info["path"])
        if found is None:
            raise web.HTTPNotFound()
        body, kind = found
        charset = None if kind.startswith("image/png") else "utf-8"
        return web.Response(body=body, content_type=kind, charset=charset)

    async def _not_found(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            raise ConnectError(grpc.StatusCode.UNIMPLEMENTED, "no such method here")
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        return web.Response(
            status=404, body=self._not_found_page, content_type="text/html", charset="utf-8"
        )

    def _check_browser(self, request: web.Request, *, connect: bool) -> None:
        """check_browser_request, with each refusal logged: a cross-site attempt is news."""
        try:
            check_browser_request(request.headers, self.listener.origins, connect=connect)
        except ConnectError as error:
            log_event(
                log,
                "dashboard.refused",
                level=logging.WARNING,
                path=request.path[:200],
                origin=request.headers.get("Origin", "")[:200],
                peer=request.remote or "",
                reason=error.message,
            )
            raise

    # Request bodies

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body, which must arrive within the idle timeout.

        Without a bound, a body trickled in a byte at a time holds its connection for
        as long as the peer likes (tests/e2e/test_server_cli.py::
        test_fail_idle_http_connections_starve_the_admin_api).
        """
        timeout = self._limits.idle_timeout
        try:
            async with asyncio.timeout(timeout):
                return await request.read()
        except TimeoutError:
            log_event(
                log,
                "request body too slow",
                level=logging.WARNING,
                path=request.path[:200],
                peer=request.remote or "",
            )
            raise ConnectError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request body did not arrive within {timeout:g} seconds",
                http_status=REQUEST_TIMEOUT,
            ) from None

    async def _json_object(self, request: web.Request) -> dict[str, Any]:
        body = await self._read_body(request)
        return load_json_object(body, request.path[:200], request.remote or "")

    # Sign-in, sign-out and who is signed in

    async def _blocking(self, call: Callable[[], T]) -> T:
        """A blocking call (the store) where the server runs its handlers, errors as Connect's."""
        try:
            return await self._run(call)
        except SielumError as error:
            raise ConnectError.of(error) from None

    async def _sign_in(self, request: web.Request) -> web.Response:
        self._check_browser(request, connect=False)
        code = (await self._json_object(request)).get("code")
        if not isinstance(code, str):
            raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, "code must be a string")
        peer = request.remote or ""

        def sign_in() -> tuple[str, str]:
            # An admin revoked since asking for the link is refused, the link unspent.
            # (Revoked between this check and the next line, they get a session that
            # the same check refuses on every call.)
            admin = self._sessions.admin_of(code)
            if admin is not None:
                self._authorizer.admit(_identity(admin, None), peer)
            new = self._sessions.start_session(code, peer)
            return new.key.reveal(), new.session.admin

        key, admin = await self._blocking(sign_in)
        response = web.json_response({"admin": admin})
        # No Max-Age: the cookie ends with the browser; the server ends the session
        # after 30 idle minutes or 8 hours in any case.
        response.set_cookie(COOKIE, key, path="/", secure=True, httponly=True, samesite="Strict")
        return response

    async def _sign_out(self, request: web.Request) -> web.Response:
        self._check_browser(request, connect=False)
        key = request.cookies.get(COOKIE)
        if key is not None:
            peer = request.remote or ""
            await self._blocking(functools.partial(self._sessions.end, key, peer))
        response = web.json_response({})
        response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        return response

    async def _current(self, request: web.Request) -> web.Response:
        self._check_browser(request, connect=False)
        key = request.cookies.get(COOKIE)
        peer = request.remote or ""

        def current() -> Identity:
            if key is None:
                raise UnauthenticatedError(SIGNED_OUT)
            identity = self._identity(key)
            self._authorizer.admit(identity, peer)
            return identity

        identity = await self._blocking(current)
        assert identity.not_after is not None
        return web.json_response(
            {"admin": identity.name, "expiresAt": identity.not_after.isoformat()}
        )

    def _identity(self, key: str) -> Identity:
        session = self._sessions.check(key)
        return _identity(session.admin, session.expires_at)

    # AdminService over Connect

    async def _connect(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        full_name = f"/{request.match_info['service']}/{request.match_info['method']}"
        if self._observe is None:
            return await self._answer(request, full_name)
        # Counted with the gRPC calls, transport="connect", refusals included.
        if self._started is not None:
            self._started(full_name)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await self._answer(request, full_name)
        except ConnectError as error:
            code = error.code
            raise
        except web.HTTPException as error:
            code = _http_error(error).code
            raise
        finally:
            self._observe(full_name, code, time.perf_counter() - started)

    async def _answer(self, request: web.Request, full_name: str) -> web.Response:
        self._check_browser(request, connect=True)
        method = self._methods.get(full_name)
        if method is None:
            raise ConnectError(
                grpc.StatusCode.UNIMPLEMENTED, f"{full_name} is not a method served here"
            )
        body = await self._read_body(request)
        key = request.cookies.get(COOKIE)
        peer = request.remote or ""

        def call() -> Message | Awaitable[Message]:
            # The session stands in for a client certificate; no session is no
            # credential at all, and the Authorizer refuses it like a call
            # without a certificate.
            identity = None if key is None else self._identity(key)
            authorized = self._authorizer.authorize(
                full_name, identity, peer, credential=CredentialKind.SESSION
            )
            return method.handler(
                parse_request(body, method.request_class, full_name, peer), authorized
            )

        try:
            reply = await self._run(call)
            if inspect.isawaitable(reply):  # as the gRPC transport does (core/methods.py)
                reply = await reply
        except ConnectError:
            raise
        except SielumError as error:
            raise ConnectError.of(error) from None
        except NotImplementedError as error:
            raise ConnectError(grpc.StatusCode.UNIMPLEMENTED, str(error)) from None
        except Exception:
            log.exception("unexpected error in %s (dashboard)", full_name)
            internal = InternalError("internal error")
            raise ConnectError.of(internal) from None
        return web.json_response(to_json(reply))


def _identity(admin: str, session_expires_at: Any) -> Identity:
    """The caller a session stands for. Its expiry caps any login link it asks for.

    It says it is a session, not a certificate, so that the method table can keep
    the methods that manage identities to certificates (core/authorization.py).
    """
    return Identity(
        role=Role.ADMIN,
        name=admin,
        not_after=session_expires_at,
        credential=CredentialKind.SESSION,
    )


def _error_response(error: ConnectError) -> web.Response:
    return web.Response(status=error.status, body=error.body(), content_type="application/json")


def _allow(error: web.HTTPException) -> dict[str, str]:
    allow = error.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def _http_error(error: web.HTTPException) -> ConnectError:
    """aiohttp's own refusals (a body too large, a method not allowed) in Connect's form."""
    if error.status == 413:
        return ConnectError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request is larger than {MAX_BODY_BYTES} bytes",
            http_status=413,
        )
    if error.status == 405:
        return ConnectError(grpc.StatusCode.INVALID_ARGUMENT, "only POST is served here", 405)
    return ConnectError(grpc.StatusCode.INVALID_ARGUMENT, error.reason, http_status=error.status)
