"""What keeps the studio's server the user's own: a local server is an attack surface.

- **Host** (Starlette's `TrustedHostMiddleware`): a request whose Host header is not one of the server's own
  names is refused. This stops DNS rebinding: a web page on evil.example whose name is re-pointed at 127.0.0.1
  still sends `Host: evil.example`.
- **Origin** (`SameOrigin`): a browser names the page a request comes from; one that is not this server's own
  (`http://<its Host>`) is refused, so a page elsewhere cannot start runs on the user's machine (cross-site
  requests). Requests without an Origin (a plain link, curl) pass on to the token check.
- **Token** (`TokenGate`, as Jupyter does): a random token made at launch is in the URL the server prints; the
  first page load with it sets an HttpOnly, SameSite=Strict cookie, and every request must carry one of the two.
  Another local user or program that can reach the port but never saw the URL is refused.

Each refusal is a one-line plain-text 403; nothing is run or read before these checks.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence

from starlette.datastructures import Headers, QueryParams
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import cookie_parser
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
COOKIE = "diffx_studio_token"


def new_token() -> str:
    """A per-launch secret for the URL (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


class SameOrigin:
    """Refuse a request whose Origin header is present and is not `http(s)://<the request's Host>`."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and origin not in (f"http://{headers.get('host')}",
                                                     f"https://{headers.get('host')}"):
                response = PlainTextResponse("refused: this request comes from another site's page (Origin "
                                             "header); open the studio from the URL diffx printed", status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class TokenGate:
    """Refuse a request that carries neither the launch token (`?token=`) nor its cookie; a page load with the
    token in its URL sets the cookie, so the page's own requests carry it."""

    def __init__(self, app: ASGIApp, token: str | None):
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        query_token = QueryParams(scope.get("query_string", b"")).get("token")
        cookie_token = cookie_parser(Headers(scope=scope).get("cookie", "")).get(COOKIE)
        if not any(given_token is not None and hmac.compare_digest(given_token, self.token)
                   for given_token in (query_token, cookie_token)):
            response = PlainTextResponse("refused: no valid token; open the studio from the URL diffx printed "
                                         "(it ends with ?token=…)", status_code=403)
            await response(scope, receive, send)
            return
        if query_token is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: dict) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def guards(token: str | None, hosts: Sequence[str] = LOCAL_HOSTS) -> list[Middleware]:
    """The middleware stack, outermost first: Host, then Origin, then the token."""
    return [Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts)),
            Middleware(SameOrigin), Middleware(TokenGate, token=token)]
