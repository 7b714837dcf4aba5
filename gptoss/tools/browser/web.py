"""The web: pages fetched over HTTP(S) with the readable text extracted (trafilatura), and search
through a provider when one is configured. Fetching a page is guarded three ways: the egress policy
(egress.py: public addresses only unless the operator allows more, every redirect hop re-checked, the
connection pinned to the checked address), the decode budget (decode.py: the size limit holds while
inflating) and the parse budget (a capped number of bytes parsed on worker threads under a time limit).
Search providers are the operator's own configuration and are reached directly.

- SearXNG: ``SEARXNG_URL`` (an instance with the JSON format enabled),
- Exa: ``EXA_API_KEY``,
- You.com: ``YDC_API_KEY``.

``GPTOSS_SEARCH_PROVIDER`` (searxng | exa | youcom) picks one when several are configured.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlparse

from gptoss.tools.base import ToolError
from gptoss.tools.browser.backend import BackendError, BrowserBackend
from gptoss.tools.browser.decode import ACCEPT_ENCODING, BoundedDecoder
from gptoss.tools.browser.display import page_lines, search_results_page
from gptoss.tools.browser.egress import EgressPolicy, pinned_transport, tls_context
from gptoss.tools.browser.page import Page, html_to_page, markdown_to_page, pdf_to_page, source_page, text_to_page

USER_AGENT = "gptoss-browser/0.1 (+https://github.com/openai/gpt-oss)"


@dataclass
class SearchHit:
    title: str
    url: str
    snippet: str


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _client(url: str, timeout: float):
    import httpx

    # loopback addresses never go through a proxy from the environment
    return httpx.AsyncClient(
        timeout=timeout, follow_redirects=True, headers={"User-Agent": USER_AGENT}, trust_env=not _is_loopback(url)
    )


class SearchProvider(ABC):
    name = ""

    @abstractmethod
    async def search(self, query: str, topn: int) -> list[SearchHit]: ...

    async def _get_json(self, url: str, params: dict, headers: dict | None = None, timeout: float = 20.0) -> object:
        async with _client(url, timeout) as client:
            resp = await client.get(url, params=params, headers=headers or {})
        return self._json(resp)

    async def _post_json(self, url: str, body: dict, headers: dict | None = None, timeout: float = 20.0) -> object:
        async with _client(url, timeout) as client:
            resp = await client.post(url, json=body, headers=headers or {})
        return self._json(resp)

    def _json(self, resp) -> object:
        if resp.status_code != 200:
            raise BackendError(f"{self.name} search failed: HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            return resp.json()
        except ValueError:
            raise BackendError(f"{self.name} search returned something that is not JSON: {resp.text[:200]}") from None


class SearxngSearch(SearchProvider):
    name = "searxng"

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")

    async def search(self, query: str, topn: int) -> list[SearchHit]:
        data = await self._get_json(f"{self.base_url}/search", {"q": query, "format": "json"})
        results = data.get("results", []) if isinstance(data, dict) else []
        return [
            SearchHit(r.get("title") or r.get("url", ""), r["url"], r.get("content") or "")
            for r in results
            if isinstance(r, dict) and r.get("url")
        ][:topn]


class ExaSearch(SearchProvider):
    name = "exa"
    URL = "https://api.exa.ai/search"

    def __init__(self, api_key: str, url: str | None = None):
        self.api_key = api_key
        self.url = url or self.URL

    async def search(self, query: str, topn: int) -> list[SearchHit]:
        data = await self._post_json(
            self.url,
            {"query": query, "numResults": topn, "contents": {"text": {"maxCharacters": 400}}},
            headers={"x-api-key": self.api_key},
        )
        results = data.get("results", []) if isinstance(data, dict) else []
        return [
            SearchHit(r.get("title") or r["url"], r["url"], (r.get("summary") or r.get("text") or "")[:400])
            for r in results
            if isinstance(r, dict) and r.get("url")
        ][:topn]


class YouSearch(SearchProvider):
    name = "youcom"
    URL = "https://api.ydc-index.io/v1/search"

    def __init__(self, api_key: str, url: str | None = None):
        self.api_key = api_key
        self.url = url or self.URL

    async def search(self, query: str, topn: int) -> list[SearchHit]:
        data = await self._get_json(self.url, {"query": query, "count": topn}, headers={"X-API-Key": self.api_key})
        results = data.get("results", {}) if isinstance(data, dict) else {}
        hits = []
        for r in list(results.get("web", [])) + list(results.get("news", [])):
            if isinstance(r, dict) and r.get("url"):
                snippet = r.get("description") or " ".join(r.get("snippets") or [])
                hits.append(SearchHit(r.get("title") or r["url"], r["url"], snippet))
        return hits[:topn]


def provider_from_env(env: dict | None = None) -> SearchProvider | None:
    env = os.environ if env is None else env
    available = {}
    if env.get("SEARXNG_URL"):
        available["searxng"] = lambda: SearxngSearch(env["SEARXNG_URL"])
    if env.get("EXA_API_KEY"):
        available["exa"] = lambda: ExaSearch(env["EXA_API_KEY"])
    if env.get("YDC_API_KEY"):
        available["youcom"] = lambda: YouSearch(env["YDC_API_KEY"])
    choice = env.get("GPTOSS_SEARCH_PROVIDER")
    if choice:
        if choice not in ("searxng", "exa", "youcom"):
            raise ToolError(f"GPTOSS_SEARCH_PROVIDER: expected searxng, exa or youcom, found {choice!r}")
        if choice not in available:
            need = {"searxng": "SEARXNG_URL", "exa": "EXA_API_KEY", "youcom": "YDC_API_KEY"}[choice]
            raise ToolError(f"GPTOSS_SEARCH_PROVIDER={choice} needs {need} to be set")
        return available[choice]()
    for name in ("searxng", "exa", "youcom"):
        if name in available:
            return available[name]()
    return None


class WebBackend(BrowserBackend):
    """Pages over HTTP(S) under the egress policy (:mod:`gptoss.tools.browser.egress`), decoded under a byte
    budget (:mod:`gptoss.tools.browser.decode`) and parsed off the event loop under a time budget."""

    def __init__(
        self,
        search_provider: SearchProvider | None = None,
        timeout: float = 20.0,
        max_bytes: int = 10 * 2**20,
        policy: EgressPolicy | None = None,
        max_redirects: int = 5,
        max_parse_bytes: int = 2 * 2**20,
        parse_timeout: float = 20.0,
        verify=True,
    ):
        self.provider = search_provider
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.policy = policy if policy is not None else EgressPolicy.from_env()
        self.max_redirects = max_redirects
        self.max_parse_bytes = max_parse_bytes
        self.parse_timeout = parse_timeout
        self.tls = tls_context(verify)  # verify: True (the system's CAs) or an ssl.SSLContext
        self.source = "web" + (f" ({search_provider.name} search)" if search_provider else "")

    @classmethod
    def from_env(cls, policy: EgressPolicy | None = None) -> WebBackend:
        return cls(provider_from_env(), policy=policy)

    def can_search(self) -> bool:
        return self.provider is not None

    def can_fetch(self, url: str) -> bool:
        return urlparse(url).scheme in ("http", "https")

    async def search(self, query: str, topn: int) -> Page:
        if self.provider is None:
            raise BackendError("web search is not configured (set SEARXNG_URL, EXA_API_KEY or YDC_API_KEY)")
        hits = await self.provider.search(query, topn)
        return search_results_page(query, [(h.title, h.url, h.snippet, None) for h in hits])

    async def fetch(self, url: str, view_source: bool = False) -> Page:
        if not self.can_fetch(url):
            raise BackendError(f"cannot open `{url}`: only http and https URLs can be opened on the web")
        try:  # one deadline for all hops and the whole body (a server trickling bytes cannot hold it open)
            body, final_url, ctype, encoding = await asyncio.wait_for(self._download(url), self.timeout)
        except asyncio.TimeoutError:
            raise BackendError(f"could not open `{url}`: no complete answer within {self.timeout:g} s") from None
        return await parse_off_loop(
            body, final_url, ctype, encoding, view_source, self.max_parse_bytes, self.parse_timeout
        )

    async def _download(self, url: str) -> tuple[bytes, str, str, str]:
        """The decoded body, final URL, content type and text encoding of ``url``; redirects followed here,
        each hop checked again by the egress policy as it connects."""
        import httpx

        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING}
        try:
            async with httpx.AsyncClient(
                transport=pinned_transport(self.policy, self.tls),
                timeout=self.timeout,
                follow_redirects=False,
                headers=headers,
                trust_env=False,
            ) as client:
                current = url
                for _hop in range(self.max_redirects + 1):
                    if urlparse(current).scheme not in ("http", "https"):
                        raise BackendError(f"`{url}` redirects to `{current}`, which is not an http(s) URL")
                    async with client.stream("GET", current) as resp:
                        if resp.is_redirect and "location" in resp.headers:
                            current = str(resp.url.join(resp.headers["location"]))
                            continue
                        if resp.status_code >= 400:
                            raise BackendError(f"could not open `{url}`: HTTP {resp.status_code}")
                        declared = resp.headers.get("content-length", "")
                        if declared.isdigit() and int(declared) > self.max_bytes:
                            raise BackendError(f"`{url}` is larger than {self.max_bytes} bytes")
                        decoder = BoundedDecoder(resp.headers.get("content-encoding"), self.max_bytes, f"`{url}`")
                        raw = 0
                        async for chunk in resp.aiter_raw():
                            raw += len(chunk)
                            if raw > self.max_bytes:
                                raise BackendError(f"`{url}` is larger than {self.max_bytes} bytes")
                            if decoder.layers:  # inflating megabytes: on a thread (zlib lets go of the GIL)
                                await asyncio.to_thread(decoder.feed, chunk)
                            else:
                                decoder.feed(chunk)
                        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                        return decoder.result(), str(resp.url), ctype, resp.encoding or "utf-8"
                raise BackendError(f"`{url}` redirects more than {self.max_redirects} times")
        except httpx.HTTPError as exc:
            raise BackendError(f"could not open `{url}`: {exc}") from None


# Parsing and wrapping a big page takes seconds of CPU: it runs on these threads (never on the event
# loop), two at a time at most, each under a time budget. A thread cannot be killed; one past its budget
# finishes in the background (bounded, as its input is capped at max_parse_bytes) and holds its slot.
_PARSERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gptoss-page")


async def parse_off_loop(
    body: bytes, url: str, ctype: str, encoding: str, view_source: bool, max_parse_bytes: int, timeout: float
) -> Page:
    future = asyncio.get_running_loop().run_in_executor(
        _PARSERS, _parse, body, url, ctype, encoding, view_source, max_parse_bytes
    )
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except asyncio.TimeoutError:
        raise BackendError(f"`{url}` took more than {timeout:g} s to read; it was given up") from None


def _parse(body: bytes, url: str, ctype: str, encoding: str, view_source: bool, max_parse_bytes: int) -> Page:
    if ctype == "application/pdf" or body[:5] == b"%PDF-":
        if len(body) > max_parse_bytes * 4:
            raise BackendError(
                f"`{url}` is a PDF of {len(body)} bytes; the browser reads PDFs up to {max_parse_bytes * 4} bytes"
            )
        page = pdf_to_page(body, url)
    else:
        cut = len(body) > max_parse_bytes
        try:
            text = body[:max_parse_bytes].decode(encoding, errors="replace")
        except LookupError:  # an unknown charset name from the server
            text = body[:max_parse_bytes].decode("utf-8", errors="replace")
        page = _text_page(text, url, ctype, view_source)
        if cut:
            page.text += f"\n\n[The page continues: only its first {max_parse_bytes} of {len(body)} bytes were read.]"
    page_lines(page)  # wrapped once here, off the loop; every scroll reuses the lines
    return page


def _text_page(text: str, url: str, ctype: str, view_source: bool) -> Page:
    if view_source:
        return source_page(text, url)
    if ctype in ("text/html", "application/xhtml+xml") or (not ctype and "<html" in text[:1000].lower()):
        return html_to_page(text, url, readable=True)
    if ctype in ("text/markdown", "text/x-markdown") or url.endswith((".md", ".markdown")):
        return markdown_to_page(text, url)
    if ctype.startswith("text/") or ctype in ("application/json", "application/xml", ""):
        return text_to_page(text, url)
    raise BackendError(f"`{url}` is {ctype}, which the browser cannot show")
