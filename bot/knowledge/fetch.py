"""Reading a knowledge source into documents: an HTTP(S) page or file, one local file, or a folder.

URL sources are an SSRF risk (the daemon may sit next to a cloud metadata endpoint or an admin
panel), so every hop is checked before it is fetched: the host is resolved, every address must
be globally routable (no private, loopback, link-local, CGNAT, multicast or reserved address)
unless `allow_private_hosts` is set, and the connection goes to the address that was checked
(the URL is rewritten to the IP, with the original Host header and TLS server name), so a DNS
answer that changes between check and connect cannot redirect it. Redirects are followed by hand
and each target is checked again. Bodies are streamed and cut off at the size cap.

A source's credential header (bot/knowledge/auth.py) is sent only to the source's own origin
(scheme, host name, port) or its same-host upgrade from http:80 to https:443 — the rule httpx
applies to `Authorization` on redirects. httpx's own rule would not hold here: the request goes to
the pinned IP, so two host names on one address would look alike, and it strips only
`Authorization`, not a custom header such as `X-API-Key`. Once a redirect leaves the origin the
header is dropped for every later hop, even one that comes back.

Local sources must resolve (symlinks followed) to a path under one of `allowed_roots`; a `..` or
a symlink leading out of the root refuses the whole sync rather than silently skipping a file.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from bot.knowledge.errors import FetchFailed, SourceRefused
from bot.logs import get_logger
from bot.settings import KnowledgeSettings

if TYPE_CHECKING:
    from bot.knowledge.auth import SourceAuth

_log = get_logger(__name__)

TEXT_TYPES = frozenset({"text/plain", "text/markdown", "text/x-markdown", "text/html", "application/xhtml+xml"})
FILE_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".rst", ".html", ".htm"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Document:
    """One fetched document: where it came from (URL or path relative to the source), a title, text."""

    ref: str
    title: str
    text: str


def redact_userinfo(url: str) -> str:
    """The URL without any user:password part (safe in messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --- HTML to text -------------------------------------------------------------------------------

class _TextExtractor(HTMLParser):
    """Visible text of a page, paragraphs kept apart; script, style and the like dropped."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head"})
    _BLOCK = frozenset({"p", "div", "br", "li", "tr", "section", "article", "pre", "blockquote",
                        "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "header", "footer"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip_depth = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skip_depth += 1
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP and self._skip_depth:
            self._skip_depth -= 1
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip_depth:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """(title, visible text) of an HTML document."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    lines = [" ".join(line.split()) for line in "".join(extractor.parts).split("\n")]
    paragraphs: list[str] = []
    for line in lines:
        if line:
            paragraphs.append(line)
        elif paragraphs and paragraphs[-1] != "":
            paragraphs.append("")
    return " ".join(extractor.title.split()), "\n".join(paragraphs).strip()


def _title_of_text(text: str, fallback: str) -> str:
    for line in text.splitlines():
        stripped = line.strip().lstrip("#").strip()
        if stripped:
            return stripped[:200]
    return fallback


# --- URL sources --------------------------------------------------------------------------------

# Cloud instance-metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba): credentials live there.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))


def _address_allowed(address: str, settings: KnowledgeSettings) -> bool:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip.version == network.version and ip in network for network in settings.allowed_private_networks):
        return True
    if ip in METADATA_ADDRESSES:
        return False
    if settings.allow_private_hosts:
        return not ip.is_multicast and not ip.is_unspecified
    return ip.is_global and not ip.is_multicast


async def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise FetchFailed(f"cannot resolve {host!r}: {err.strerror or err}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise FetchFailed(f"{host!r} has no address")
    return addresses


async def _checked_target(url: str, settings: KnowledgeSettings) -> tuple[httpx.URL, str]:
    """The URL rewritten to a checked IP address, and the Host header to send with it."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise SourceRefused(f"{redact_userinfo(url)!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceRefused(f"{redact_userinfo(url)!r} is not an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise SourceRefused("URLs with a user name or password are refused; link a credential instead")
    host = parts.hostname
    addresses = await _resolve(host, port)
    refused = [address for address in addresses if not _address_allowed(address, settings)]
    if refused:
        raise SourceRefused(
            f"{host!r} resolves to a private, loopback, link-local, metadata or reserved address ({refused[0]}); "
            "such hosts are refused unless [knowledge] allow_private_hosts or allowed_private_networks allow them",
            hint="list the network in [knowledge] allowed_private_networks if this source is on your own network",
        )
    address = addresses[0]
    ip_host = f"[{address}]" if ":" in address else address
    default_port = port == (443 if parts.scheme == "https" else 80)
    host_header = host if default_port else f"{host}:{port}"
    pinned = urlunsplit((parts.scheme, f"{ip_host}:{port}", parts.path or "/", parts.query, ""))
    return httpx.URL(pinned), host_header


def _media_type(content_type: str) -> tuple[str, str | None]:
    media, _, params = content_type.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip('"').strip()
    return media.strip().lower(), charset


async def _read_capped(response: httpx.Response, limit: int, url: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise FetchFailed(f"{url} is {int(declared):,} bytes, over the {limit:,}-byte limit "
                          "([knowledge] max_document_bytes)")
    body = bytearray()
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) > limit:
            raise FetchFailed(f"{url} is over the {limit:,}-byte limit ([knowledge] max_document_bytes)")
    return bytes(body)


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name from the server
        return raw.decode("utf-8", errors="replace")


def _origin(url: str) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)
    except ValueError:  # a malformed port: no origin, so nothing is carried (the next check refuses the URL)
        return "", url, -1


def may_carry_credentials(previous: str, target: str) -> bool:
    """Whether a redirect from `previous` to `target` may keep the credential header."""
    before, after = _origin(previous), _origin(target)
    if -1 in (before[2], after[2]):
        return False
    if before == after:
        return True
    return before[1] == after[1] and before[0::2] == ("http", 80) and after[0::2] == ("https", 443)


def _status_message(shown: str, status: int, auth: SourceAuth | None) -> str:
    if status in (401, 403) and auth is not None:
        return f"{shown} answered HTTP {status}: it refused credential {auth.credential_id}"
    return f"{shown} answered HTTP {status}"


async def fetch_url(url: str, settings: KnowledgeSettings, *, auth: SourceAuth | None = None) -> Document:
    """The document at `url`, every hop SSRF-checked, size- and time-bounded; `auth` sent within its origin."""
    shown = redact_userinfo(url)
    current = url
    timeout = httpx.Timeout(settings.fetch_timeout_s)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(settings.max_redirects + 1):
            target, host_header = await _checked_target(current, settings)
            headers = {"Host": host_header, "Accept": ", ".join(sorted(TEXT_TYPES))}
            if auth is not None:
                headers[auth.header] = auth.value.get_secret_value()
            request = client.build_request(
                "GET", target, headers=headers, extensions={"sni_hostname": urlsplit(current).hostname or ""},
            )
            try:
                async with asyncio.timeout(settings.fetch_timeout_s):
                    response = await client.send(request, stream=True)
                    try:
                        if response.status_code in _REDIRECTS and "location" in response.headers:
                            following = urljoin(current, response.headers["location"])
                            if auth is not None and not may_carry_credentials(current, following):
                                _log.info("knowledge.credential_dropped_on_redirect", credential_id=auth.credential_id,
                                          to_host=urlsplit(following).hostname or "")
                                auth = None
                            current = following
                            continue
                        if response.status_code != 200:
                            raise FetchFailed(_status_message(shown, response.status_code, auth))
                        media, charset = _media_type(response.headers.get("content-type", ""))
                        if media not in TEXT_TYPES:
                            raise FetchFailed(f"{shown} is {media or 'of no declared type'}; only "
                                              f"{', '.join(sorted(TEXT_TYPES))} can be indexed")
                        raw = await _read_capped(response, settings.max_document_bytes, shown)
                    finally:
                        await response.aclose()
            except TimeoutError:
                raise FetchFailed(f"{shown} did not answer within {settings.fetch_timeout_s:g} s") from None
            except httpx.HTTPError as err:
                raise FetchFailed(f"cannot fetch {shown}: {type(err).__name__}") from None
            text = _decode(raw, charset)
            if media in ("text/html", "application/xhtml+xml"):
                title, text = html_to_text(text)
                return Document(ref=redact_userinfo(current), title=title or _title_of_text(text, shown), text=text)
            return Document(ref=redact_userinfo(current), title=_title_of_text(text, shown), text=text)
    raise FetchFailed(f"{shown} redirected more than {settings.max_redirects} times")


# --- Local sources ------------------------------------------------------------------------------

def _root_of(path: Path, roots: list[Path]) -> Path | None:
    for root in roots:
        if path == root or root in path.parents:
            return root
    return None


def _resolve_under_roots(uri: str, settings: KnowledgeSettings) -> tuple[Path, Path]:
    """(resolved path, its root); SourceRefused outside every allowed root."""
    if not settings.allowed_roots:
        raise SourceRefused("local knowledge sources are disabled: no [knowledge] allowed_roots are configured",
                            hint="list the folders the daemon may read in [knowledge] allowed_roots")
    raw = Path(uri).expanduser()
    if not raw.is_absolute():
        raise SourceRefused(f"{uri!r} is not an absolute path")
    roots = [Path(os.path.realpath(root)) for root in settings.allowed_roots]
    resolved = Path(os.path.realpath(raw))
    root = _root_of(resolved, roots)
    if root is None:
        raise SourceRefused(f"{uri!r} is outside the allowed roots ({', '.join(str(r) for r in roots)})",
                            hint="move the documents under an allowed root or add one to [knowledge] allowed_roots")
    return resolved, root


def _read_file(path: Path, root: Path, limit: int) -> Document:
    real = Path(os.path.realpath(path))
    if _root_of(real, [root]) is None:
        raise SourceRefused(f"{path.relative_to(root) if root in path.parents else path} links outside "
                            f"the allowed root {root}")
    try:
        descriptor = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        raise FetchFailed(f"cannot open {real}: {err.strerror}") from None
    with os.fdopen(descriptor, "rb") as handle:
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise FetchFailed(f"{real} is over the {limit:,}-byte limit ([knowledge] max_document_bytes)")
    text = _decode(raw, None)
    ref = str(real.relative_to(root))
    if real.suffix.lower() in (".html", ".htm"):
        title, text = html_to_text(text)
        return Document(ref=ref, title=title or _title_of_text(text, real.name), text=text)
    return Document(ref=ref, title=_title_of_text(text, real.name), text=text)


def _read_local(kind: str, uri: str, settings: KnowledgeSettings) -> list[Document]:
    path, root = _resolve_under_roots(uri, settings)
    if kind == "file":
        if not path.is_file():
            raise SourceRefused(f"{uri!r} is not a file")
        return [_read_file(path, root, settings.max_document_bytes)]
    if not path.is_dir():
        raise SourceRefused(f"{uri!r} is not a directory")
    documents: list[Document] = []
    for folder, dirs, files in os.walk(path, followlinks=False):
        dirs.sort()
        for linked in [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            if _root_of(Path(os.path.realpath(os.path.join(folder, linked))), [root]) is None:
                raise SourceRefused(f"{os.path.join(folder, linked)} links outside the allowed root {root}")
        for name in sorted(files):
            candidate = Path(folder) / name
            if candidate.suffix.lower() not in FILE_SUFFIXES:
                continue
            if len(documents) >= settings.max_files:
                raise FetchFailed(f"{uri!r} holds more than {settings.max_files} documents ([knowledge] max_files)")
            documents.append(_read_file(candidate, root, settings.max_document_bytes))
    return documents


async def fetch_documents(
    kind: str, uri: str, settings: KnowledgeSettings, *, auth: SourceAuth | None = None,
) -> list[Document]:
    """Every document of a source; SourceRefused for a kind or location not allowed here."""
    if kind == "url":
        return [await fetch_url(uri, settings, auth=auth)]
    if kind in ("file", "directory"):
        return await asyncio.to_thread(_read_local, kind, uri, settings)
    raise SourceRefused(f"knowledge sources of kind {kind!r} cannot be synchronised; "
                        "the kinds this daemon reads are url, file and directory")
