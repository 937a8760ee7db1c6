"""The `web_fetch` tool: one http(s) page as text, with SSRF protection on every hop.

How a fetch stays on public addresses (unless `agent.tools.web.allow` says otherwise):

- the tool resolves the host itself and refuses the URL if ANY of its addresses is loopback,
  private, link-local, multicast, reserved, unspecified or otherwise not global, including the
  IPv4 address inside an IPv4-mapped, NAT64 or 6to4 IPv6 address;
- it then connects to the vetted address itself: the request URL carries the IP, the `Host`
  header the name, and for https the name goes in the TLS SNI (httpcore's `sni_hostname`
  extension), so the certificate is still checked against the name. DNS is asked once per hop,
  so an answer that changes between the check and the connection (DNS rebinding) is never used;
- each hop gets a fresh client, so no pooled connection is reused under another name;
- redirects are followed by hand, at most `max_redirects`, and every hop is vetted again;
- only http and https; the body is read up to `max_bytes`; the whole fetch has one deadline.

HTML is turned into text with html2text; text types pass through; anything else is refused.
"""

from __future__ import annotations

import asyncio
import codecs
import html
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import html2text
import httpx

from corral.agent.settings import WebConfig
from corral.agent.tools.base import MAX_CONTENT_CHARS, ToolContext, ToolError, ToolResult, ToolSpec

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_MAX_CHARS = 8000
HTML_TYPES = {"text/html", "application/xhtml+xml"}
TEXT_TYPES = {"application/json", "application/xml", "application/javascript", "application/x-yaml"}
REDIRECTS = {301, 302, 303, 307, 308}
NAT64 = ipaddress.ip_network("64:ff9b::/96")
USER_AGENT = "corral-web-fetch/0.1"
ALLOW_HINT = (
    "corral fetches only public addresses; to reach this one, add the host or a network "
    "containing it to agent.tools.web.allow in corral.yaml"
)


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host (an IP literal resolves to itself)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_problem(ip: IPAddress) -> str | None:
    """Why this address is not one to fetch from the public web, or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner: ipaddress.IPv4Address | None = None
        if ip.ipv4_mapped is not None:
            inner, kind = ip.ipv4_mapped, "an IPv4-mapped"
        elif ip in NAT64:
            inner, kind = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "a NAT64"
        elif ip.sixtofour is not None:
            inner, kind = ip.sixtofour, "a 6to4"
        if inner is not None:
            problem = address_problem(inner)
            if problem is not None:
                return f"{kind} form of {inner}, which is {problem}"
            if ip.ipv4_mapped is not None or ip in NAT64:
                return None  # ipaddress calls these ranges reserved: the IPv4 inside decides
    for flag, words in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(ip, flag):
            return words
    return None if ip.is_global else "not a global address"


class AddressPolicy:
    """`WebConfig.allow`: host names, and networks (CIDRs or single IPs), that may be fetched."""

    def __init__(self, allow: Iterable[str]) -> None:
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allow:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                self.names.add(entry.strip().lower().rstrip("."))

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    def address_allowed(self, ip: IPAddress) -> bool:
        forms: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            forms.append(ip.ipv4_mapped)
        return any(form in net for form in forms for net in self.networks if form.version == net.version)

    def refusal(self, ip: IPAddress) -> str | None:
        if self.address_allowed(ip):
            return None
        return address_problem(ip)


@dataclass
class Page:
    url: str
    status: int
    content_type: str
    body: bytes
    charset: str | None
    body_cut: bool
    redirects: list[str] = field(default_factory=list)


class WebFetchTool:
    """`web_fetch`: GET one page and return its text, refusing local and private addresses."""

    def __init__(self, config: WebConfig | None = None, resolver: Resolver | None = None) -> None:
        self.config = config or WebConfig()
        self.policy = AddressPolicy(self.config.allow)
        self.resolve: Resolver = resolver or system_resolve
        self.spec = ToolSpec(
            name="web_fetch",
            description="Fetch a web page (http or https) and return its text: HTML is converted "
            "to plain text with links, text files pass through. Local and private addresses are "
            "refused unless configured.",
            parameters={
                "type": "object",
                "properties": {
                    "url": {"type": "string", "minLength": 1, "description": "an http:// or https:// URL"},
                    "max_chars": {
                        "type": "integer",
                        "minimum": 200,
                        "maximum": MAX_CONTENT_CHARS - 1000,
                        "description": f"how much of the page's text to return (default {DEFAULT_MAX_CHARS})",
                    },
                },
                "required": ["url"],
                "additionalProperties": False,
            },
            risk="low",
            timeout_s=self.config.timeout_s + 5,
        )

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        url = _parse(str(args["url"]))
        max_chars = int(args.get("max_chars", DEFAULT_MAX_CHARS))
        try:
            async with asyncio.timeout(self.config.timeout_s):
                page = await self.fetch(url)
        except TimeoutError:
            raise ToolError(
                f"{url} did not answer within {self.config.timeout_s:g} s; try again later or another page"
            ) from None
        return render(page, max_chars)

    async def fetch(self, url: httpx.URL) -> Page:
        redirects: list[str] = []
        for _hop in range(self.config.max_redirects + 1):
            addresses = await self.vet(url, came_from=redirects[-1] if redirects else None)
            async with httpx.AsyncClient(
                trust_env=False, follow_redirects=False, timeout=self.config.timeout_s
            ) as client:
                response = await _send(client, url, addresses)
                try:
                    location = response.headers.get("location")
                    if response.status_code in REDIRECTS and location:
                        redirects.append(str(url))
                        url = _parse(str(url.join(location)), came_from=str(url))
                        continue
                    return await self.read(url, response, redirects)
                finally:
                    await response.aclose()
        raise ToolError(
            f"{redirects[0]} redirected more than {self.config.max_redirects} times; "
            "fetch the last address yourself if it is the page you want"
        )

    async def vet(self, url: httpx.URL, came_from: str | None = None) -> list[str]:
        """The addresses of url's host, all of them allowed; else a ToolError saying why not."""
        host = url.raw_host.decode("ascii").lower()
        port = url.port or (443 if url.scheme == "https" else 80)
        via = f" (redirected from {came_from})" if came_from else ""
        try:
            addresses = await self.resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise ToolError(f"cannot resolve {host}{via}: {exc}; check the address") from None
        if not addresses:
            raise ToolError(f"{host}{via} has no address; check the address")
        if self.policy.host_allowed(host):
            return addresses
        for address in addresses:
            problem = self.policy.refusal(ipaddress.ip_address(address.split("%")[0]))
            if problem is not None:
                shown = host if host == address else f"{host} resolves to {address}, which"
                raise ToolError(f"refused {url}{via}: {shown} is {problem}; {ALLOW_HINT}")
        return addresses

    async def read(self, url: httpx.URL, response: httpx.Response, redirects: list[str]) -> Page:
        if response.status_code >= 400:
            raise ToolError(
                f"{url} answered HTTP {response.status_code} {response.reason_phrase}; "
                "check the address or try another page"
            )
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and not _is_text(content_type):
            raise ToolError(
                f"{url} is {content_type}, not a web page or text; web_fetch reads only HTML and text"
            )
        body = bytearray()
        cut = False
        try:
            async for chunk in response.aiter_bytes():
                room = self.config.max_bytes - len(body)
                if len(chunk) > room:
                    body += chunk[:room]
                    cut = True
                    break
                body += chunk
        except httpx.HTTPError as exc:
            raise ToolError(f"reading {url} failed: {type(exc).__name__}: {exc}; try again") from None
        if not content_type:
            content_type = _sniff(bytes(body[:1024]), url)
        charset = response.charset_encoding
        return Page(str(url), response.status_code, content_type, bytes(body), charset, cut, redirects)


def _parse(raw: str, came_from: str | None = None) -> httpx.URL:
    via = f" (redirected from {came_from})" if came_from else ""
    try:
        url = httpx.URL(raw.strip())
    except httpx.InvalidURL as exc:
        raise ToolError(f"{raw!r}{via} is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ToolError(f"refused {raw}{via}: only http:// and https:// URLs can be fetched")
    if not url.host:
        raise ToolError(f"{raw!r}{via} has no host; write a full URL such as https://example.org/")
    return url


async def _send(client: httpx.AsyncClient, url: httpx.URL, addresses: list[str]) -> httpx.Response:
    """GET url from the first vetted address that accepts a connection."""
    host = url.raw_host.decode("ascii")
    extensions = {}
    if url.scheme == "https" and not _is_ip(host):
        extensions["sni_hostname"] = host  # TLS names (and verifies) the host, not the IP
    headers = {
        "Host": url.netloc.decode("ascii"),
        "User-Agent": USER_AGENT,
        "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.1",
        "Accept-Encoding": "identity",  # no decompression bombs
    }
    failure: Exception | None = None
    for address in addresses:
        request = client.build_request(
            "GET", url.copy_with(host=address), headers=headers, extensions=extensions
        )
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            failure = exc
        except httpx.HTTPError as exc:
            raise ToolError(f"fetching {url} failed: {type(exc).__name__}: {exc}") from None
    raise ToolError(f"cannot connect to {host} ({', '.join(addresses)}): {failure}; is the site up?")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_text(content_type: str) -> bool:
    return content_type in HTML_TYPES or content_type in TEXT_TYPES or content_type.startswith("text/")


def _sniff(head: bytes, url: httpx.URL) -> str:
    """A content type for a response that sent none: HTML, text, or refused as binary."""
    if b"\x00" in head:
        raise ToolError(f"{url} sent binary data without a content type; web_fetch reads only HTML and text")
    start = head.lstrip().lower()
    return "text/html" if start.startswith((b"<!doctype html", b"<html")) else "text/plain"


def _decode(page: Page) -> str:
    charset = page.charset
    if charset is None and page.content_type in HTML_TYPES:
        meta = re.search(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_.:-]+)""", page.body[:4096], re.I)
        charset = meta.group(1).decode("ascii") if meta else None
    try:
        codecs.lookup(charset or "utf-8")
    except LookupError:
        charset = None
    return page.body.decode(charset or "utf-8", errors="replace")


def html_to_text(markup: str, base_url: str) -> tuple[str, str]:
    """(title, text) of an HTML document; links are made absolute, images dropped."""
    found = re.search(r"<title[^>]*>(.*?)</title>", markup, re.I | re.S)
    title = " ".join(html.unescape(found.group(1)).split()) if found else ""
    converter = html2text.HTML2Text(baseurl=base_url, bodywidth=0)
    converter.ignore_images = True
    converter.unicode_snob = True
    text = converter.handle(markup)
    return title, re.sub(r"\n{3,}", "\n\n", text).strip()


def render(page: Page, max_chars: int) -> ToolResult:
    text = _decode(page)
    title = ""
    if page.content_type in HTML_TYPES:
        title, text = html_to_text(text, page.url)
    text_cut = len(text) > max_chars
    lines = [f"URL: {page.url}", f"Title: {title or '(none)'}"]
    if page.redirects:
        lines.append(f"[redirected from {page.redirects[0]}]")
    if page.body_cut:
        lines.append(f"[the page is longer than {len(page.body)} bytes; only that much was read]")
    if text_cut:
        lines.append(f"[text cut at {max_chars} of {len(text)} characters]")
    content = "\n".join(lines) + "\n\n" + text[:max_chars]
    data = {
        "url": page.url,
        "status": page.status,
        "content_type": page.content_type,
        "title": title,
        "bytes": len(page.body),
        "body_cut": page.body_cut,
        "text_cut": text_cut,
        "redirects": page.redirects,
    }
    return ToolResult(True, content, data=data)
