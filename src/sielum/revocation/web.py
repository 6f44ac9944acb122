"""The revocation port over plain HTTP: GET /crl, and OCSP at /ocsp (POST, and GET per RFC 5019).

What it serves is signed by the CA, so plain HTTP suffices (and is what relying parties
fetch CRLs and OCSP over: HTTPS would need revocation checking of its own). The
listener is bounded like the dashboard and metrics ones (core/listeners.py). Bad input
is answered at once and changes nothing: another method 405, a body over
MAX_OCSP_REQUEST 413, a request that is not DER OCSP 400 carrying the OCSP
malformedRequest answer, a request for a certificate of another CA the OCSP
unauthorized answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import socket
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import timedelta
from email.utils import format_datetime
from typing import Any, TypeVar

from aiohttp import web
from cryptography.x509 import ocsp

from sielum.ca.authority import CertificateAuthority
from sielum.ca.revocation import MAX_OCSP_REQUEST, malformed_ocsp_response
from sielum.clock import Clock
from sielum.core.listeners import BoundedSite, HttpLimits
from sielum.logs import log_event
from sielum.revocation.publisher import CrlPublisher

log = logging.getLogger("sielum.revocation")

CRL_TYPE = "application/pkix-crl"
OCSP_REQUEST_TYPE = "application/ocsp-request"
OCSP_RESPONSE_TYPE = "application/ocsp-response"
# A base64 request in a GET path: a request of MAX_OCSP_REQUEST bytes, percent-encoded.
_MAX_GET_PATH = 3 * (4 * MAX_OCSP_REQUEST // 3 + 4)
T = TypeVar("T")
Run = Callable[[Callable[[], T]], Awaitable[T]]


class RevocationEndpoint:
    """The CRL the publisher keeps, and OCSP answers signed as they are asked for.

    run is the server's runner (core/runner.py): an OCSP answer reads the store, on the
    event loop with a database on this host, on a thread with one across a network.
    """

    def __init__(
        self,
        publisher: CrlPublisher,
        ca: CertificateAuthority,
        clock: Clock,
        run: Callable[[Callable[[], Any]], Awaitable[Any]],
        *,
        limits: HttpLimits | None = None,
    ) -> None:
        self._publisher = publisher
        self._ca = ca
        self._clock = clock
        self._run = run
        self._limits = limits or HttpLimits()
        self._runner: web.AppRunner | None = None
        self.site: BoundedSite | None = None

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_OCSP_REQUEST)
        app.router.add_get("/crl", self._crl)
        app.router.add_post("/ocsp", self._ocsp_post)
        app.router.add_get("/ocsp/{request:.*}", self._ocsp_get)
        return app

    async def start(self, sock: socket.socket) -> None:
        self._runner = web.AppRunner(
            self.application(),
            access_log=None,
            handle_signals=False,
            # Room for a GET request of MAX_OCSP_REQUEST bytes, so it gets 413 from us
            # rather than aiohttp's 400 for any request line over 8190 bytes.
            max_line_size=_MAX_GET_PATH + 64,
            **self._limits.runner_options(),
        )
        await self._runner.setup()
        self.site = BoundedSite(self._runner, sock, limits=self._limits, label="revocation")
        await self.site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # GET /crl

    async def _crl(self, request: web.Request) -> web.Response:
        crl = self._publisher.current
        if crl is None:
            return web.Response(
                status=503,
                text="the CRL is not built yet, try again in a few seconds\n",
                headers={"Retry-After": "5"},
            )
        return web.Response(
            body=crl.der,
            headers={
                "Content-Type": CRL_TYPE,
                "Last-Modified": format_datetime(crl.built_at, usegmt=True),
                # A change shows within seconds: caches must ask again every time.
                "Cache-Control": "no-cache",
            },
        )

    # OCSP

    async def _ocsp_post(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_OCSP_REQUEST:
            return _too_large()
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != OCSP_REQUEST_TYPE:
            return _malformed(f"Content-Type must be {OCSP_REQUEST_TYPE}")
        try:
            async with asyncio.timeout(self._limits.idle_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _too_large()
        except TimeoutError:
            return web.Response(status=408, text="the request body did not arrive in time\n")
        return await self._answer(body, cache=False)

    async def _ocsp_get(self, request: web.Request) -> web.Response:
        # RFC 5019 section 5: GET /ocsp/<url-encoded base64 of the DER request>. The raw
        # path is read, so that '/' and '+' of base64 arrive as they were sent.
        encoded = request.raw_path.split("?", 1)[0][len("/ocsp/") :]
        if len(encoded) > _MAX_GET_PATH:
            return _too_large()
        try:
            text = urllib.parse.unquote(encoded, errors="strict")
            body = base64.b64decode(text, validate=True)
        except (UnicodeDecodeError, binascii.Error, ValueError):
            return _malformed("the path after /ocsp/ is not base64")
        if len(body) > MAX_OCSP_REQUEST:
            return _too_large()
        return await self._answer(body, cache=True)

    async def _answer(self, body: bytes, *, cache: bool) -> web.Response:
        try:
            ocsp.load_der_ocsp_request(body)
        except (ValueError, TypeError):
            return _malformed("the body is not a DER OCSP request for one certificate")
        now = self._clock.now()
        publisher = self._publisher
        der = await self._run(lambda: self._ca.answer_ocsp(body, publisher.look_up, now))
        headers = {"Content-Type": OCSP_RESPONSE_TYPE}
        if cache:
            headers.update(_cache_headers(der))
        else:
            headers["Cache-Control"] = "no-store"
        return web.Response(body=der, headers=headers)


def _cache_headers(der: bytes) -> dict[str, str]:
    """RFC 5019 section 6: a GET answer may be cached until its nextUpdate."""
    try:
        response = ocsp.load_der_ocsp_response(der)
        this_update = response.this_update_utc
        next_update = response.next_update_utc
    except ValueError:  # an unsuccessful answer (unauthorized) has neither
        return {"Cache-Control": "no-store"}
    if next_update is None:
        return {"Cache-Control": "no-store"}
    max_age = max(0, int((next_update - this_update - timedelta(minutes=1)).total_seconds()))
    return {
        "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
        "Last-Modified": format_datetime(this_update, usegmt=True),
        "Expires": format_datetime(next_update, usegmt=True),
    }


def _malformed(why: str) -> web.Response:
    """400 with the OCSP malformedRequest answer (an OCSP client reads it), why in a header."""
    log_event(log, "ocsp", level=logging.INFO, outcome="malformed", reason=why)
    return web.Response(
        status=400,
        body=malformed_ocsp_response(),
        headers={"Content-Type": OCSP_RESPONSE_TYPE, "X-Sielum-Error": why},
    )


def _too_large() -> web.Response:
    return web.Response(status=413, text=f"an OCSP request is at most {MAX_OCSP_REQUEST} bytes\n")
