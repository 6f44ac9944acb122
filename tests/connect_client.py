"""A small HTTPS client for the dashboard's endpoints, as a browser's requests look on the wire.

It trusts only the Sielum CA, and sends exactly the headers a test asks for, so
tests can play a well-behaved page, another site, or an HTML form.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

SERVICE = "/sielum.admin.v1.AdminService/"
COOKIE = "__Host-sielum_session"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined by "\n"
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        """Connect's error code ("" for a success)."""
        return "" if self.status == 200 else str(self.json().get("code", ""))

    @property
    def message(self) -> str:
        return "" if self.status == 200 else str(self.json().get("message", ""))


@dataclass
class DashboardClient:
    base_url: str  # https://127.0.0.1:PORT
    ca_pem: bytes
    cookie: str | None = None  # the session cookie's value
    origin: str | None = field(default=None)

    def __post_init__(self) -> None:
        if self.origin is None:
            self.origin = self.base_url
        self._context = ssl.create_default_context(cadata=self.ca_pem.decode())

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        parts = urlsplit(self.base_url)
        connection = http.client.HTTPSConnection(
            parts.hostname or "127.0.0.1", parts.port or 443, context=self._context, timeout=30
        )
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            found: dict[str, str] = {}
            for name, value in response.getheaders():
                key = name.lower()
                found[key] = f"{found[key]}\n{value}" if key in found else value
            return Answer(response.status, found, response.read())
        finally:
            connection.close()

    def browser_headers(self, content_type: str = "application/json") -> dict[str, str]:
        headers = {"Content-Type": content_type}
        if self.origin:
            headers["Origin"] = self.origin
        if self.cookie is not None:
            headers["Cookie"] = f"{COOKIE}={self.cookie}"
        return headers

    def post(self, path: str, document: object = None, **headers: str) -> Answer:
        body = json.dumps({} if document is None else document).encode()
        return self.request("POST", path, body, {**self.browser_headers(), **headers})

    def call(self, method: str, request: object = None, **headers: str) -> Answer:
        """One AdminService method over Connect, as the dashboard's pages call it."""
        return self.post(SERVICE + method, request, **{"Connect-Protocol-Version": "1", **headers})

    def sign_in(self, link: str) -> Answer:
        """Trade the one-time code of a login link for a session cookie, as /login does."""
        answer = self.post("/session/login", {"code": link.split("#", 1)[1]})
        if answer.status == 200:
            self.cookie = session_cookie(answer)
        return answer

    def sign_out(self) -> Answer:
        return self.post("/session/logout")


def session_cookie(answer: Answer) -> str:
    """The session cookie's value from a Set-Cookie header."""
    for line in answer.headers.get("set-cookie", "").split("\n"):
        name, _, rest = line.partition("=")
        if name.strip() == COOKIE:
            return rest.split(";", 1)[0]
    raise AssertionError(f"no {COOKIE} cookie in {answer.headers}")
