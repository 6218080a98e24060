"""RFC 9457 problem details: every error the API returns is one of these, with its own type.

    ApiProblem                      (an HTTP answer, not an OrchestratorError)
    ├── MalformedRequest       400  body is not JSON / query cannot be read
    ├── InvalidCursor          400  a pagination cursor we did not issue, or for another sort
    ├── Unauthenticated        401  no token, or an unknown, expired or revoked one
    ├── InsufficientScope      403  the token lacks the scope the route needs
    ├── NotFound               404  no such resource or route
    ├── MethodNotAllowed       405
    ├── Conflict               409  a unique constraint, or a state that forbids the action
    ├── PayloadTooLarge        413
    ├── UnsupportedMediaType   415  the body is not application/json
    ├── ValidationFailed       422  the body or query does not match the schema
    ├── ReferenceNotFound      422  a referenced id does not exist
    ├── SourceRefused          422  a knowledge source's location is not allowed (private host, outside roots)
    ├── OAuthStateInvalid      400  callback state missing, unknown, expired or reused
    ├── OAuthIssuerMismatch    400  callback `iss` is not the expected issuer (RFC 9207)
    ├── OAuthDenied            400  the authorization server returned an error
    ├── OAuthExchangeFailed    502  the token endpoint refused the code (e.g. wrong PKCE verifier)
    ├── RateLimited            429  carries Retry-After
    ├── UpstreamFailed         502  a provider or service we called failed
    ├── Unavailable            503  a component the action needs is not running
    └── InternalError          500  a bug; the request id lets an operator find the traceback
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "urn:orchestrator:problem:"


class ApiProblem(Exception):
    """An error answer; `slug` names its type (`urn:orchestrator:problem:<slug>`)."""

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self, *, instance: str, request_id: str | None) -> dict[str, Any]:
        """The problem document (RFC 9457 members plus our extensions)."""
        document: dict[str, Any] = {
            "type": TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if request_id:
            document["request_id"] = request_id
        document.update(self.extra)
        return document

    def response(self, *, instance: str, request_id: str | None) -> web.Response:
        """The problem as an application/problem+json response."""
        return web.Response(
            status=self.status,
            body=json.dumps(self.body(instance=instance, request_id=request_id), default=str).encode(),
            content_type=PROBLEM_CONTENT_TYPE,
            headers=self.headers,
        )


class MalformedRequest(ApiProblem):
    """The request cannot be read (invalid JSON, bad encoding)."""

    status, slug, title = 400, "malformed-request", "Malformed request"


class InvalidCursor(ApiProblem):
    """A pagination cursor that is not one we issued for this list and sort."""

    status, slug, title = 400, "invalid-cursor", "Invalid pagination cursor"


class Unauthenticated(ApiProblem):
    """No usable bearer token."""

    status, slug, title = 401, "unauthenticated", "Authentication required"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="orchestrator"'})


class InsufficientScope(ApiProblem):
    """The token is valid but lacks the scope this route needs."""

    status, slug, title = 403, "insufficient-scope", "Insufficient scope"


class NotFound(ApiProblem):
    """No resource (or route) at this address."""

    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(ApiProblem):
    """The route exists but not with this method."""

    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(ApiProblem):
    """The change conflicts with existing data or the resource's state."""

    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(ApiProblem):
    """The body is larger than the API accepts."""

    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(ApiProblem):
    """The body is not JSON."""

    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class ValidationFailed(ApiProblem):
    """The body or query does not match its schema; `errors` lists each problem."""

    status, slug, title = 422, "validation-failed", "Validation failed"


class ReferenceNotFound(ApiProblem):
    """A field refers to a row that does not exist."""

    status, slug, title = 422, "reference-not-found", "Referenced resource not found"


class SourceRefused(ApiProblem):
    """A knowledge source's definition is not allowed here (kind, host or path); fix the source."""

    status, slug, title = 422, "source-refused", "Knowledge source refused"


class OAuthStateInvalid(ApiProblem):
    """The OAuth callback's state is missing, unknown, expired or already used."""

    status, slug, title = 400, "oauth-state-invalid", "OAuth state invalid"


class OAuthIssuerMismatch(ApiProblem):
    """The callback's `iss` is not the authorization server the flow started with (RFC 9207)."""

    status, slug, title = 400, "oauth-issuer-mismatch", "OAuth issuer mismatch"


class OAuthDenied(ApiProblem):
    """The authorization server reported an error instead of a code."""

    status, slug, title = 400, "oauth-denied", "OAuth authorization denied"


class OAuthExchangeFailed(ApiProblem):
    """The token endpoint refused the code (wrong verifier, expired code) or did not answer."""

    status, slug, title = 502, "oauth-exchange-failed", "OAuth code exchange failed"


class RateLimited(ApiProblem):
    """Too many requests for this token."""

    status, slug, title = 429, "rate-limited", "Too many requests"


class UpstreamFailed(ApiProblem):
    """A provider or external service failed while we acted for the request."""

    status, slug, title = 502, "upstream-failed", "Upstream service failed"


class Unavailable(ApiProblem):
    """A component the action needs is not running in this daemon."""

    status, slug, title = 503, "unavailable", "Service unavailable"


class InternalError(ApiProblem):
    """A bug: logged with its traceback under the request id."""

    status, slug, title = 500, "internal-error", "Internal server error"


ALL_PROBLEMS: tuple[type[ApiProblem], ...] = (
    MalformedRequest, InvalidCursor, Unauthenticated, InsufficientScope, NotFound, MethodNotAllowed,
    Conflict, PayloadTooLarge, UnsupportedMediaType, ValidationFailed, ReferenceNotFound, SourceRefused,
    RateLimited,
    OAuthStateInvalid, OAuthIssuerMismatch, OAuthDenied, OAuthExchangeFailed,
    UpstreamFailed, Unavailable, InternalError,
)
