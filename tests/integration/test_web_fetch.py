"""web_fetch against a real local HTTP server: SSRF refusals, redirects re-checked, limits."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from corral.agent.settings import WebConfig
from corral.agent.tools.base import ToolContext, ToolRegistry, ToolResult
from corral.agent.tools.web import AddressPolicy, WebFetchTool, address_problem

PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>Lab  &amp; notes</title>
<style>body { color: red }</style><script>var secret = "SCRIPT-TEXT";</script></head>
<body><h1>Rack 2</h1><p>The NAS runs <b>ZFS</b>. See <a href="/docs/zfs">the ZFS page</a>.</p>
<img src="/pic.png" alt="a picture"><ul><li>disk one</li><li>disk two</li></ul></body></html>"""


@dataclass
class Site:
    port: int
    hits: list[dict[str, Any]] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


class Handler(BaseHTTPRequestHandler):
    site: Site

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        self.site.hits.append({"path": path, "host": self.headers.get("Host")})
        if path == "/page":
            self.reply(200, "text/html; charset=utf-8", PAGE)
        elif path == "/plain":
            self.reply(200, "text/plain", b"line one\nline two\n")
        elif path == "/latin1":
            self.reply(200, "text/plain; charset=iso-8859-1", "caf\u00e9".encode("latin-1"))
        elif path == "/sniffed":
            self.reply(200, None, b"<html><title>Sniffed</title><p>no header</p></html>")
        elif path == "/big":
            self.reply(200, "text/plain", b"0123456789" * 10_000)
        elif path == "/image":
            self.reply(200, "image/png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
        elif path == "/binary":
            self.reply(200, "application/octet-stream", b"\x00\x01\x02")
        elif path == "/missing":
            self.reply(404, "text/plain", b"no such page")
        elif path == "/slow":
            time.sleep(3)
            self.reply(200, "text/plain", b"late")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.reply(404, "text/plain", b"unknown")

    def reply(self, status: int, content_type: str | None, body: bytes) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def site() -> Iterator[Site]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    served = Site(server.server_address[1])
    server.RequestHandlerClass = type("SiteHandler", (Handler,), {"site": served})
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield served
    server.shutdown()
    server.server_close()
    thread.join()


async def fetch(url: str, allow: list[str] | None = None, **config: Any) -> ToolResult:
    tool = WebFetchTool(WebConfig(allow=allow or [], **config))
    return await ToolRegistry([tool]).invoke("web_fetch", {"url": url}, ToolContext())


async def test_loopback_is_refused_by_default(site: Site) -> None:
    result = await fetch(site.url("/page"))
    assert not result.ok
    assert "refused" in result.content and "127.0.0.1 is loopback" in result.content
    assert "agent.tools.web.allow" in result.content
    assert site.hits == []  # refused before connecting


async def test_allowed_html_becomes_text_with_title_and_final_url(site: Site) -> None:
    result = await fetch(site.url("/page"), allow=["127.0.0.1"])
    assert result.ok, result.content
    text = result.content
    assert text.startswith(f"URL: {site.url('/page')}\nTitle: Lab & notes\n")
    assert "# Rack 2" in text and "**ZFS**" in text and "* disk one" in text
    assert f"[the ZFS page]({site.url('/docs/zfs')})" in text  # links made absolute
    assert "SCRIPT-TEXT" not in text and "color: red" not in text and "pic.png" not in text
    assert "<p>" not in text
    assert result.data["status"] == 200 and result.data["content_type"] == "text/html"
    assert site.hits[0]["host"] == f"127.0.0.1:{site.port}"


async def test_plain_text_passes_through_and_charsets_are_honoured(site: Site) -> None:
    plain = await fetch(site.url("/plain"), allow=["127.0.0.0/8"])
    assert plain.ok and plain.content.endswith("\n\nline one\nline two\n")
    assert "Title: (none)" in plain.content
    latin = await fetch(site.url("/latin1"), allow=["127.0.0.1"])
    assert latin.content.endswith("caf\u00e9")
    sniffed = await fetch(site.url("/sniffed"), allow=["127.0.0.1"])
    assert sniffed.ok and "Title: Sniffed" in sniffed.content and "no header" in sniffed.content


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/", "10.0.0.1 is private"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is link-local"),
        ("http://[::1]/", "::1 is loopback"),
        ("http://0.0.0.0/", "0.0.0.0 is unspecified"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped form of 127.0.0.1, which is loopback"),
        ("http://[::ffff:10.1.2.3]/", "IPv4-mapped form of 10.1.2.3, which is private"),
        ("http://[64:ff9b::7f00:1]/", "NAT64 form of 127.0.0.1, which is loopback"),
        ("http://[2002:a9fe:a9fe::]/", "6to4 form of 169.254.169.254, which is link-local"),
        ("http://[fe80::1]/", "fe80::1 is link-local"),
        ("http://[fd00::1]/", "fd00::1 is private"),
        ("http://224.0.0.1/", "224.0.0.1 is multicast"),
        ("http://100.64.0.1/", "100.64.0.1 is not a global address"),
        ("http://240.0.0.1/", "240.0.0.1 is"),
        ("http://localhost/", "localhost resolves to"),
        ("http://2130706433/", "2130706433 resolves to 127.0.0.1, which is loopback"),
    ],
)
async def test_private_and_local_addresses_are_refused(url: str, reason: str) -> None:
    result = await fetch(url)
    assert not result.ok
    assert result.content.startswith(f"refused {url}")
    assert reason in result.content


async def test_allow_by_host_name(site: Site) -> None:
    result = await fetch(site.url("/plain", host="localhost"), allow=["localhost"])
    assert result.ok, result.content
    assert site.hits[-1]["host"] == f"localhost:{site.port}"


async def test_redirect_to_a_disallowed_address_is_refused_on_the_hop(site: Site) -> None:
    for target in (
        f"http://127.0.0.2:{site.port}/page",
        "http://169.254.169.254/latest/meta-data/",
        f"http://[::1]:{site.port}/page",
        "http://10.0.0.1/",
    ):
        result = await fetch(site.url(f"/redirect?to={target}"), allow=["127.0.0.1"])
        assert not result.ok
        assert result.content.startswith(f"refused {target} (redirected from {site.url('/redirect')}")
    assert {hit["path"] for hit in site.hits} == {"/redirect"}
    scheme = await fetch(site.url("/redirect?to=file:///etc/passwd"), allow=["127.0.0.1"])
    assert not scheme.ok and "only http:// and https://" in scheme.content


async def test_allowed_redirects_are_followed_and_counted(site: Site) -> None:
    result = await fetch(site.url(f"/redirect?to={site.url('/plain')}"), allow=["127.0.0.1"])
    assert result.ok
    assert result.content.startswith(f"URL: {site.url('/plain')}\n")
    assert "[redirected from" in result.content
    relative = await fetch(site.url("/redirect?to=/page"), allow=["127.0.0.1"])
    assert relative.ok and "Title: Lab & notes" in relative.content
    looping = await fetch(site.url("/loop"), allow=["127.0.0.1"], max_redirects=3)
    assert not looping.ok and "redirected more than 3 times" in looping.content
    assert sum(hit["path"] == "/loop" for hit in site.hits) == 4


@pytest.mark.parametrize(
    "url", ["ftp://example.org/file", "file:///etc/passwd", "gopher://x/", "javascript:alert(1)"]
)
async def test_non_http_schemes_are_refused(url: str) -> None:
    result = await fetch(url)
    assert not result.ok and "only http:// and https://" in result.content


async def test_oversize_bodies_are_cut(site: Site) -> None:
    result = await fetch(site.url("/big"), allow=["127.0.0.1"], max_bytes=2048)
    assert result.ok
    assert result.data["bytes"] == 2048 and result.data["body_cut"]
    assert "only that much was read" in result.content
    assert result.content.endswith("0123456789" * 204 + "01234567")
    tool = WebFetchTool(WebConfig(allow=["127.0.0.1"]))
    short = await tool.call({"url": site.url("/big"), "max_chars": 500}, ToolContext())
    assert short.data["text_cut"] and "[text cut at 500 of 100000 characters]" in short.content
    assert short.content.endswith("\n\n" + "0123456789" * 50)


@pytest.mark.parametrize(("path", "kind"), [("/image", "image/png"), ("/binary", "application/octet-stream")])
async def test_non_text_content_types_are_refused(site: Site, path: str, kind: str) -> None:
    result = await fetch(site.url(path), allow=["127.0.0.1"])
    assert not result.ok
    assert f"is {kind}, not a web page or text" in result.content


async def test_http_errors_and_timeouts_say_what_happened(site: Site) -> None:
    missing = await fetch(site.url("/missing"), allow=["127.0.0.1"])
    assert not missing.ok and "answered HTTP 404" in missing.content
    slow = await fetch(site.url("/slow"), allow=["127.0.0.1"], timeout_s=0.5)
    assert not slow.ok and "did not answer within 0.5 s" in slow.content


async def test_connects_to_the_vetted_address_and_asks_dns_once_per_hop(site: Site) -> None:
    """A name the system cannot resolve works only if the request goes to the address the tool
    vetted; a second DNS answer (a rebinding attempt to 10.9.9.9) is never asked for or used."""
    answers: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        answer = "127.0.0.1" if not answers else "10.9.9.9"
        answers.append(f"{host}:{port}->{answer}")
        return [answer]

    tool = WebFetchTool(WebConfig(allow=["127.0.0.1"]), resolver=resolver)
    result = await tool.call({"url": f"http://rebind.test:{site.port}/plain"}, ToolContext())
    assert result.ok, result.content
    assert answers == [f"rebind.test:{site.port}->127.0.0.1"]
    assert site.hits[-1] == {"path": "/plain", "host": f"rebind.test:{site.port}"}

    answers.clear()
    hops = await ToolRegistry([tool]).invoke(
        "web_fetch", {"url": f"http://rebind.test:{site.port}/redirect?to=/plain"}, ToolContext()
    )
    assert not hops.ok and "10.9.9.9, which is private" in hops.content  # re-vetted on the hop
    assert len(answers) == 2


@pytest.mark.parametrize("address", ["1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_pass_the_check(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None
    assert AddressPolicy([]).refusal(ipaddress.ip_address(address)) is None


def test_allow_list_takes_names_networks_and_mapped_forms() -> None:
    policy = AddressPolicy(["nas.lan.", "192.168.1.0/24", "fd00::5"])
    assert policy.host_allowed("NAS.lan") and not policy.host_allowed("other.lan")
    assert policy.refusal(ipaddress.ip_address("192.168.1.20")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:192.168.1.20")) is None
    assert policy.refusal(ipaddress.ip_address("192.168.2.20")) == "private"
    assert policy.refusal(ipaddress.ip_address("fd00::5")) is None
