"""Who may use the service: the token, and the request checks of ``tools/annotate/guard`` (Host, Origin, JSON
writes, body size).

With ``--token`` every request must carry it, in any of the forms the two clients send: ``Authorization: Token T``
(Label Studio's style, also ``Bearer T``), ``Authorization: Basic ...`` whose password is T (Label Studio's "basic
auth" ML backend setting, any user name), or a ``Token: T`` header (X-AnyLabeling's ``api_key``). A request without
it is answered 401 before anything else is read.

On 127.0.0.1 the Host header must name the loopback (DNS rebinding); on another interface the clients reach the
service by names it cannot know, so there the token is what keeps others out and the Host and Origin checks give way
to it (``allowed_hosts=None``).
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any, Callable, Iterable, Optional

from tools.annotate.guard import LOCAL_HOSTS, MAX_BODY_BYTES, SECURITY_HEADERS, RequestGuard, Receive, Scope, Send

ANY_HOST = "any-host.invalid"  # what the Host check sees when every host name is accepted


def presented_tokens(headers: dict[str, str]) -> list[str]:
    """The tokens a request presents (lower-case header names), in every accepted form."""
    found = []
    if "token" in headers:
        found.append(headers["token"].strip())
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme in ("token", "bearer"):
        found.append(value)
    elif scheme == "basic":
        try:
            found.append(base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2])
        except (binascii.Error, UnicodeDecodeError):
            pass
    return found


STATUS_CODES = {400: "INVALID_PARAMS", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
                405: "METHOD_NOT_ALLOWED", 409: "CONFLICT", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE",
                421: "MISDIRECTED_REQUEST", 422: "INVALID_PARAMS"}


class XAnyLabelingErrors:
    """ASGI middleware: under /v1 (the X-AnyLabeling door) an error answer ``{"detail": sentence, "code": ...}``
    becomes ``{"success": false, "error": {"code", "message"}}``, whoever wrote it (the app, a guard, the router)."""

    def __init__(self, app: Callable):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def buffered(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    start["pass"] = True
                    await send(message)
                else:
                    start.update(message)
                return
            if start.get("pass") or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                await _send_converted(send, start, b"".join(chunks))
        await self.app(scope, receive, buffered)


async def _send_converted(send: Send, start: dict[str, Any], body: bytes) -> None:
    status = start["status"]
    try:
        data = json.loads(body)
    except ValueError:
        data = {"detail": body.decode("utf-8", "replace") or f"error {status}"}
    if isinstance(data, dict) and "success" not in data:
        detail = data.get("detail")
        message = detail if isinstance(detail, str) else json.dumps(detail)
        code = data.get("code") or STATUS_CODES.get(status, "INFERENCE_ERROR" if status >= 500 else "ERROR")
        body = json.dumps({"success": False, "error": {"code": code, "message": message}}).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class TokenGuard:
    """ASGI middleware: 401 for any HTTP request that does not present ``token`` (None: no token needed)."""

    def __init__(self, app: Callable, token: Optional[str] = None):
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if any(hmac.compare_digest(t.encode(), self.token) for t in presented_tokens(headers)):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": "this service needs its token: send 'Authorization: Token <token>' (Label "
                                     "Studio) or a 'Token: <token>' header (X-AnyLabeling)",
                           "code": "UNAUTHORIZED"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Basic realm="clickpose"'), *SECURITY_HEADERS]})
        await send({"type": "http.response.body", "body": body})


class ServeGuard(RequestGuard):
    """``RequestGuard`` whose Host and Origin checks can be switched off (``allowed_hosts=None``, see the module
    docstring); JSON writes and the body size limit stay."""

    def __init__(self, app: Callable, allowed_hosts: Optional[Iterable[str]] = LOCAL_HOSTS,
                 max_body_bytes: int = MAX_BODY_BYTES):
        super().__init__(app, allowed_hosts if allowed_hosts is not None else (ANY_HOST,), max_body_bytes)
        self.any_host = allowed_hosts is None

    def refusal(self, method: str, headers: dict[str, str]) -> Optional[tuple[int, str]]:
        if self.any_host:
            headers = {k: v for k, v in headers.items() if k not in ("host", "origin", "sec-fetch-site")}
            headers["host"] = ANY_HOST
        return super().refusal(method, headers)
