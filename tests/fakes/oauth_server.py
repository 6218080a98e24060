"""A local OAuth 2.0 authorization server (RFC 6749 code grant + RFC 7636 PKCE + RFC 9207 `iss`).

It validates for real: the client, the exact redirect URI, single-use codes, and that
BASE64URL(SHA256(code_verifier)) equals the code_challenge sent to /authorize. Everything that
arrives is recorded in `calls` so tests assert on what crossed the socket.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    used: bool = False


@dataclass
class FakeOAuthServer:
    """Start with `await server.start()`; `issuer` is its base URL; stop with `await server.stop()`."""

    client_id: str = "client-123"
    client_secret: str = "client-secret-456"
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    issued_tokens: list[str] = field(default_factory=list)
    _grants: dict[str, _Grant] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    base_url: str = ""

    @property
    def issuer(self) -> str:
        return self.base_url

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def requests_to(self, path: str) -> list[dict[str, str]]:
        return [params for called, params in self.calls if called == path]

    async def _authorize(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        self.calls.append(("/authorize", params))
        if params.get("client_id") != self.client_id or params.get("response_type") != "code":
            return web.json_response({"error": "unauthorized_client"}, status=400)
        if params.get("code_challenge_method") != "S256" or len(params.get("code_challenge", "")) != 43:
            return web.json_response({"error": "invalid_request", "error_description": "PKCE S256 required"},
                                     status=400)
        code = secrets.token_urlsafe(24)
        self._grants[code] = _Grant(client_id=params["client_id"], redirect_uri=params["redirect_uri"],
                                    challenge=params["code_challenge"], scope=params.get("scope", ""))
        query = urlencode({"code": code, "state": params.get("state", ""), "iss": self.issuer})
        raise web.HTTPFound(f"{params['redirect_uri']}?{query}")

    async def _token(self, request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.calls.append(("/token", form))
        grant = self._grants.get(form.get("code", ""))
        if form.get("grant_type") != "authorization_code" or grant is None or grant.used:
            return web.json_response({"error": "invalid_grant"}, status=400)
        grant.used = True  # single use, even when the rest of the request is wrong
        if form.get("client_id") != grant.client_id or form.get("client_secret") != self.client_secret:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("redirect_uri") != grant.redirect_uri:
            return web.json_response({"error": "invalid_grant", "error_description": "redirect_uri"}, status=400)
        digest = hashlib.sha256(form.get("code_verifier", "").encode("ascii", "replace")).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant.challenge:
            return web.json_response({"error": "invalid_grant", "error_description": "PKCE"}, status=400)
        access = "at-" + secrets.token_urlsafe(24)
        refresh = "rt-" + secrets.token_urlsafe(24)
        self.issued_tokens += [access, refresh]
        body: dict[str, Any] = {"access_token": access, "refresh_token": refresh, "token_type": "bearer",
                                "expires_in": 3600, "scope": grant.scope}
        return web.json_response(body)
