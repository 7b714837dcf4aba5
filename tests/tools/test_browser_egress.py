"""Attacks on the browser's web fetches, every target a listener on 127.0.0.1: server-side request
forgery (loopback and private addresses in every spelling, redirects to them, DNS answers that mix
them), decompression bombs, and pages big enough to stall the event loop."""

import asyncio
import gzip
import http.server
import json
import os
import threading
import time
import zlib

import pytest

from gptoss.harmony import Message, Role
from gptoss.tools.base import ToolCall
from gptoss.tools.browser import BrowserTool, WebBackend
from gptoss.tools.browser.decode import BoundedDecoder, DecodeError
from gptoss.tools.browser.egress import AllowEntry, EgressPolicy, why_not_public


class Site:
    """A loopback HTTP server answering from ``routes`` (path -> (status, headers, body)); it records the
    path and Host header of every request it gets."""

    def __init__(self, tls=None):
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.seen: list[tuple[str, str]] = []
        self.accept: list[str] = []  # the Accept-Encoding of each request
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                site.seen.append((self.path, self.headers.get("Host", "")))
                site.accept.append(self.headers.get("Accept-Encoding", ""))
                status, headers, body = site.routes.get(self.path, (404, {}, b"not here"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:  # an ssl.SSLContext: HTTPS
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def secret():
    """What an attacker wants: a service on the server's own host."""
    s = Site()
    s.routes["/admin"] = (200, {"Content-Type": "text/plain"}, b"SECRET admin token 12345")
    yield s
    s.close()


@pytest.fixture()
def public():
    """A site standing in for a public one: the operator's allow-list opens its port, and only its port."""
    s = Site()
    yield s
    s.close()


def open_url(backend, url: str):
    call = ToolCall(
        Message.from_role_and_content(Role.ASSISTANT, json.dumps({"id": url}))
        .with_recipient("browser.open")
        .with_channel("analysis")
        .with_content_type("code")
    )
    return asyncio.run(BrowserTool(backend).run(call))


SPELLINGS = [
    "127.0.0.1",
    "localhost",
    "[::1]",
    "0.0.0.0",
    "[::]",
    "127.1",
    "2130706433",
    "0x7f.1",
    "017700000001",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "127.0.0.1.",
    "LOCALHOST",
]


@pytest.mark.parametrize("host", SPELLINGS)
def test_every_spelling_of_loopback_is_refused_before_connecting(secret, host):
    r = open_url(WebBackend(timeout=5), f"http://{host}:{secret.port}/admin")
    assert r.status == "failed"
    assert "may not connect" in r.output and ("loopback" in r.output or "unspecified" in r.output), r.output
    assert "SECRET" not in r.output and secret.seen == []


@pytest.mark.parametrize(
    "url,kind",
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),  # the cloud metadata service
        ("http://10.0.0.7/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://[fd00::1]/", "private"),
        ("http://[fe80::1]/", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://[2002:a00:1::]/", "private"),
        ("http://240.0.0.1/", "private"),
    ],
)
def test_private_link_local_and_multicast_ranges_are_refused(url, kind):
    r = open_url(WebBackend(timeout=5), url)
    assert r.status == "failed" and "may not connect" in r.output and kind in r.output, r.output


def test_a_redirect_to_loopback_from_an_allowed_site_is_refused(public, secret):
    public.routes["/page"] = (302, {"Location": f"{secret.base}/admin"}, b"")
    public.routes["/other-spelling"] = (302, {"Location": f"http://2130706433:{secret.port}/admin"}, b"")
    backend = WebBackend(timeout=5, policy=EgressPolicy.from_spec(f"127.0.0.1:{public.port}"))
    for path in ("/page", "/other-spelling"):
        r = open_url(backend, f"{public.base}{path}")
        assert r.status == "failed" and "may not connect" in r.output and "loopback" in r.output, r.output
    assert secret.seen == []  # the redirect target never got a request
    assert [p for p, _ in public.seen] == ["/page", "/other-spelling"]


def test_redirects_within_an_allowed_site_are_followed_and_bounded(public):
    public.routes["/a"] = (301, {"Location": "/b"}, b"")
    public.routes["/b"] = (200, {"Content-Type": "text/plain"}, b"arrived after one hop")
    public.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    public.routes["/ftp"] = (302, {"Location": "file:///etc/passwd"}, b"")
    backend = WebBackend(timeout=5, policy=EgressPolicy.from_spec(f"127.0.0.1:{public.port}"))
    r = open_url(backend, f"{public.base}/a")
    assert r.status == "completed" and "arrived after one hop" in r.output and f"{public.base}/b" in r.output
    public.seen.clear()
    r = open_url(backend, f"{public.base}/loop")
    assert r.status == "failed" and "redirects more than 5 times" in r.output
    assert len(public.seen) == 6
    r = open_url(backend, f"{public.base}/ftp")
    assert r.status == "failed" and "not an http(s) URL" in r.output


def test_the_connection_goes_to_the_checked_address_with_the_hosts_name_kept(public):
    """An allowed name is resolved once, by the policy's resolver; httpx connects to that address (the
    system resolver knows no ``docs.internal.test``) and still sends the name in the Host header."""
    public.routes["/doc"] = (200, {"Content-Type": "text/plain"}, b"internal documentation")
    lookups = []

    async def resolver(host, port):
        lookups.append(host)
        return ["127.0.0.1"]

    policy = EgressPolicy.from_spec("docs.internal.test", resolver=resolver)
    r = open_url(WebBackend(timeout=5, policy=policy), f"http://docs.internal.test:{public.port}/doc")
    assert r.status == "completed" and "internal documentation" in r.output, r.output
    assert public.seen == [("/doc", f"docs.internal.test:{public.port}")]
    assert lookups == ["docs.internal.test"]

    async def two(host, port):  # nothing listens on 127.0.0.2 here: the next checked address is tried
        return ["127.0.0.2", "127.0.0.1"]

    policy = EgressPolicy.from_spec("docs.internal.test", resolver=two)
    r = open_url(WebBackend(timeout=5, policy=policy), f"http://docs.internal.test:{public.port}/doc")
    assert r.status == "completed" and "internal documentation" in r.output, r.output


def test_https_verifies_the_hosts_name_and_sends_it_as_sni():
    """Pinned to 127.0.0.1, a TLS connection still names the URL's host: in SNI, and in the certificate
    check (a certificate for another name fails)."""
    import ssl

    import trustme

    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("docs.internal.test").configure_cert(server_tls)
    sni = []
    server_tls.sni_callback = lambda sock, name, ctx: sni.append(name)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)

    async def resolver(host, port):
        return ["127.0.0.1"]

    site = Site(tls=server_tls)
    try:
        site.routes["/doc"] = (200, {"Content-Type": "text/plain"}, b"served over TLS")
        for name, ok in (("docs.internal.test", True), ("wrong.internal.test", False)):
            backend = WebBackend(timeout=5, verify=client_tls, policy=EgressPolicy.from_spec(name, resolver=resolver))
            r = open_url(backend, f"https://{name}:{site.port}/doc")
            if ok:
                assert r.status == "completed" and "served over TLS" in r.output, r.output
            else:
                assert r.status == "failed" and "CERTIFICATE_VERIFY_FAILED" in r.output, r.output
        assert sni == ["docs.internal.test", "wrong.internal.test"]
        assert site.seen == [("/doc", f"docs.internal.test:{site.port}")]
    finally:
        site.close()


def test_a_name_that_resolves_to_loopback_or_to_a_mix_is_refused(secret):
    """DNS answers are checked, not names: a public-looking name that resolves to loopback (or to a public
    and a loopback address, letting the client pick) is refused, and nothing connects."""
    answers = {
        "rebind.example": ["127.0.0.1"],
        "mixed.example": ["93.184.216.34", "127.0.0.1"],
        "meta.example": ["::ffff:169.254.169.254"],
    }

    async def resolver(host, port):
        return answers[host]

    backend = WebBackend(timeout=5, policy=EgressPolicy.from_spec("", resolver=resolver))
    for host in answers:
        r = open_url(backend, f"http://{host}:{secret.port}/admin")
        assert r.status == "failed" and "may not connect" in r.output and "resolves to" in r.output, r.output
    assert secret.seen == []


def test_allow_list_entries_parse_or_name_what_is_wrong():
    assert AllowEntry.parse("*.corp.example").suffix == ".corp.example"
    assert AllowEntry.parse("[::1]:8080").port == 8080
    assert str(AllowEntry.parse("10.0.0.0/8").network) == "10.0.0.0/8"
    policy = EgressPolicy.from_spec("wiki.corp.example, 10.0.0.0/8:8443")
    assert policy.check_address("wiki.corp.example", "10.1.2.3", 80) is None
    assert policy.check_address("other.example", "10.1.2.3", 8443) is None
    assert "private" in policy.check_address("other.example", "10.1.2.3", 80)
    for bad, words in [("host:99999", "port"), ("[::1", "unclosed"), ("a b", "not a host name")]:
        with pytest.raises(ValueError, match=words):
            EgressPolicy.from_spec(bad)
    assert why_not_public(__import__("ipaddress").ip_address("93.184.216.34")) is None


def test_the_allow_list_flag_is_checked_before_anything_starts(tmp_path):
    from gptoss.errors import GptossError
    from gptoss.tools import make_toolbox

    with pytest.raises(GptossError, match=r"--browser-allow-hosts: browser allow-list: 'x:0': the port"):  # ToolError
        make_toolbox(["browser"], browser_allow_hosts="x:0")
    toolbox = make_toolbox(["browser"], browser_allow_hosts="127.0.0.1:8080")
    assert toolbox.get("browser").backend.policy.allow == [AllowEntry.parse("127.0.0.1:8080")]


# ---------------------------------------------------------------------------------------- decompression


def double_gzip_bomb() -> bytes:
    """gzip(gzip(1 GiB of zeros)) in a few kilobytes. The inner layer is 64 gzip members of 16 MiB each
    (a gzip stream is a series of members, RFC 1952): each member alone is past the size limit."""
    member = gzip.compress(bytes(16 * 2**20), 6)
    return gzip.compress(member * 64, 9)


class Watch:
    """Peak RSS (sampled on a thread every 2 ms) and the longest gap between event-loop heartbeats."""

    def __init__(self):
        self.peak = self.start = self._rss()
        self.max_gap = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    async def heartbeat(self):
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            last = now

    async def run(self, coro):
        self._thread.start()
        beat = asyncio.ensure_future(self.heartbeat())
        try:
            return await coro
        finally:
            beat.cancel()
            self._stop.set()
            self._thread.join()


def test_a_double_gzip_bomb_is_refused_while_inflating(public):
    bomb = double_gzip_bomb()
    assert len(bomb) < 50_000
    public.routes["/bomb"] = (200, {"Content-Type": "text/html", "Content-Encoding": "gzip, gzip"}, bomb)
    browser = BrowserTool(WebBackend(timeout=10, policy=EgressPolicy.from_spec(f"127.0.0.1:{public.port}")))
    call = ToolCall(
        Message.from_role_and_content(Role.ASSISTANT, json.dumps({"id": f"{public.base}/bomb"}))
        .with_recipient("browser.open")
        .with_channel("analysis")
        .with_content_type("code")
    )
    watch = Watch()
    started = time.perf_counter()
    r = asyncio.run(watch.run(browser.run(call)))
    elapsed = time.perf_counter() - started
    assert r.status == "failed" and "larger than 10485760 bytes once decompressed" in r.output, r.output
    assert elapsed < 3.0
    assert watch.peak - watch.start < 50 * 2**20, f"RSS grew {(watch.peak - watch.start) / 2**20:.0f} MiB"
    assert watch.max_gap < 0.5, f"the event loop stalled {watch.max_gap:.2f} s"


def test_stacked_unknown_and_corrupt_encodings_are_refused(public):
    text = b"<html><body><p>" + b"a readable gzip page " * 50 + b"</p></body></html>"
    public.routes["/ok"] = (200, {"Content-Type": "text/html", "Content-Encoding": "gzip"}, gzip.compress(text))
    public.routes["/deflate"] = (
        200,
        {"Content-Type": "text/plain", "Content-Encoding": "deflate"},
        zlib.compress(b"deflated words"),
    )
    public.routes["/three"] = (
        200,
        {"Content-Encoding": "gzip, gzip, gzip"},
        gzip.compress(gzip.compress(gzip.compress(b"x"))),
    )
    public.routes["/br"] = (200, {"Content-Encoding": "br"}, b"\x0b\x02\x80hello\x03")
    public.routes["/corrupt"] = (200, {"Content-Encoding": "gzip"}, b"\x1f\x8b\x08\x00garbage-garbage")
    backend = WebBackend(timeout=5, policy=EgressPolicy.from_spec(f"127.0.0.1:{public.port}"))
    assert "a readable gzip page" in open_url(backend, f"{public.base}/ok").output
    assert "deflated words" in open_url(backend, f"{public.base}/deflate").output
    assert "stacks 3 content encodings" in open_url(backend, f"{public.base}/three").output
    assert "content encoding 'br'" in open_url(backend, f"{public.base}/br").output
    assert "corrupt" in open_url(backend, f"{public.base}/corrupt").output
    assert public.accept == ["gzip, deflate"] * 5  # it asks only for what it can decode under a budget


def test_the_decoder_never_inflates_far_past_its_budget():
    member = gzip.compress(bytes(4 * 2**20))
    decoder = BoundedDecoder("gzip", 2**20)
    with pytest.raises(DecodeError, match="larger than 1048576 bytes"):
        decoder.feed(member)
    assert decoder.size <= 2**20 + 64 * 1024  # stopped within one step of the budget
    # many empty gzip members: no output, but the inflated middle layer is held to the budget too
    empties = gzip.compress(b"") * 100_000
    with pytest.raises(DecodeError, match="larger than 1048576 bytes"):
        BoundedDecoder("gzip, gzip", 2**20).feed(gzip.compress(empties))


# ---------------------------------------------------------------------------------------- big pages


@pytest.mark.parametrize("kind", ["text/plain", "text/html"])
def test_a_ten_megabyte_page_leaves_the_event_loop_responsive(public, kind):
    line = "Giant pandas spend ten to sixteen hours a day feeding on bamboo shoots and leaves. "
    text = line * (10 * 2**20 // len(line) - 1000)
    body = (f"<html><body><article><p>{text}</p></article></body></html>" if kind == "text/html" else text).encode()
    assert 9.5 * 2**20 < len(body) <= 10 * 2**20
    public.routes["/big"] = (200, {"Content-Type": kind}, body)
    browser = BrowserTool(WebBackend(timeout=20, policy=EgressPolicy.from_spec(f"127.0.0.1:{public.port}")))

    def call(args):
        return ToolCall(
            Message.from_role_and_content(Role.ASSISTANT, json.dumps(args))
            .with_recipient("browser.open")
            .with_channel("analysis")
            .with_content_type("code")
        )

    async def session():
        first = await browser.run(call({"id": f"{public.base}/big"}))
        started = time.perf_counter()
        scrolled = await browser.run(call({"loc": 20_000}))
        return first, scrolled, time.perf_counter() - started

    watch = Watch()
    first, scrolled, scroll_time = asyncio.run(watch.run(session()))
    assert first.status == "completed" and "feeding on bamboo" in first.output, first.output[:300]
    assert scrolled.status == "completed" and scrolled.output.split("\n")[3].startswith("L20000: ")
    assert watch.max_gap < 0.5, f"the event loop stalled {watch.max_gap:.2f} s"
    assert scroll_time < 0.2  # scrolling reuses the wrapped lines: no new parse, no new wrap
    assert len(public.seen) == 1
    page = browser.pages.stack[-1]
    assert page.text.endswith(f"only its first {2 * 2**20} of {len(body)} bytes were read.]")


def test_a_parse_past_its_time_budget_is_given_up_and_the_loop_stays_free(public, monkeypatch):
    from gptoss.tools.browser import web

    release = threading.Event()
    real = web.html_to_page

    def stuck(*args, **kwargs):  # a parser that spins (a pathological page) until the test lets it go
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(web, "html_to_page", stuck)
    public.routes["/slow"] = (200, {"Content-Type": "text/html"}, b"<html><body><p>slow page</p></body></html>")
    backend = WebBackend(timeout=5, parse_timeout=0.3, policy=EgressPolicy.from_spec(f"127.0.0.1:{public.port}"))
    watch = Watch()
    started = time.perf_counter()
    try:
        r = asyncio.run(
            watch.run(
                BrowserTool(backend).run(
                    ToolCall(
                        Message.from_role_and_content(Role.ASSISTANT, json.dumps({"id": f"{public.base}/slow"}))
                        .with_recipient("browser.open")
                        .with_channel("analysis")
                        .with_content_type("code")
                    )
                )
            )
        )
    finally:
        release.set()
    assert r.status == "failed" and "took more than 0.3 s to read" in r.output, r.output
    assert time.perf_counter() - started < 3 and watch.max_gap < 0.5
