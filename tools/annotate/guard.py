"""Who may talk to a local server: the checks every request passes before the app sees it.

A server on 127.0.0.1 is still reachable from any web page the user opens: a page can send requests to it, and with
DNS rebinding (a name that first points to the attacker, then to 127.0.0.1) it can even read the answers. So:

- **Host** must be one of the names the server listens on (``127.0.0.1``, ``localhost``, ``[::1]`` by default): a
  rebound name arrives with the attacker's host name and is refused (421).
- **Origin**, when a browser sends one, must be the server itself (scheme, host and port), and ``Sec-Fetch-Site``
  must not say cross-site or same-site: another page, another local port or a sandboxed frame is refused (403).
- Every write (POST, PUT, PATCH, DELETE) must be ``Content-Type: application/json``, which a page cannot send to
  another origin without the browser asking first (a CORS preflight, which this server never answers yes): 415.
- Bodies larger than ``max_body_bytes`` are refused (413) before the app reads them.

Every response carries a Content-Security-Policy that allows scripts, styles and connections from the server only
(no inline script), so markup inside a keypoint name, a config or an annotation file cannot run as script.
"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Iterable, Optional
from urllib.parse import urlsplit

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
MAX_BODY_BYTES = 1 << 20
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY")]
# FastAPI's interactive schema page is inline script by design (and holds nothing from a checkpoint or a file)
CSP_EXEMPT = ("/api/docs",)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def host_name(value: str) -> str:
    """'127.0.0.1:8765' -> '127.0.0.1', '[::1]:80' -> '::1', 'Example.COM' -> 'example.com'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class RequestGuard:
    """ASGI middleware applying the module's rules; ``allowed_hosts`` are host names without ports."""

    def __init__(self, app: Callable, allowed_hosts: Iterable[str] = LOCAL_HOSTS,
                 max_body_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.allowed_hosts = {host_name(h) for h in allowed_hosts}
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self.refusal(scope["method"], headers)
        if refusal is None and scope["method"] in WRITE_METHODS:
            body, refusal = await self._read_body(receive, headers)
            if refusal is None:
                receive = _replay(body, receive)
        if refusal is not None:
            await _answer(send, *refusal)
            return
        await self.app(scope, receive, _with_security_headers(send, scope.get("path", "")))

    def refusal(self, method: str, headers: dict[str, str]) -> Optional[tuple[int, str]]:
        """(status, sentence) for a request that breaks a rule of the module docstring, else None."""
        host = headers.get("host", "")
        if host_name(host) not in self.allowed_hosts:
            return 421, (f"this server answers only to {', '.join(sorted(self.allowed_hosts))}, not to the host "
                         f"name {host!r}; open it by one of those names")
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if origin == "null" or parts.netloc.lower() != host.lower() or parts.scheme not in ("http", "https"):
                return 403, (f"requests from another web page ({origin}) are refused: only the tool's own page at "
                             f"{host} may use this server")
        if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return 403, "requests from another web site are refused: only the tool's own page may use this server"
        if method in WRITE_METHODS:
            media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                return 415, (f"a {method} needs 'Content-Type: application/json' (got {media_type or 'none'}); "
                             "send the body as JSON")
        return None

    async def _read_body(self, receive: Receive, headers: dict[str, str]) -> tuple[bytes, Optional[tuple[int, str]]]:
        too_large = 413, f"request body over {self.max_body_bytes} bytes; send smaller requests"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return b"", too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", (400, "the client went away before its request body arrived")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _replay(body: bytes, original: Receive) -> Receive:
    """The body read by the guard, then the connection's own messages (a disconnect, when it comes)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await original()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return receive


def _with_security_headers(send: Send, path: str) -> Send:
    extra = [h for h in SECURITY_HEADERS if not (h[0] == b"content-security-policy" and path.startswith(CSP_EXEMPT))]

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)
    return wrapped


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})
