"""The web: pages fetched over HTTP(S) with the readable text extracted (trafilatura), and search
through a provider when one is configured:

- SearXNG: ``SEARXNG_URL`` (an instance with the JSON format enabled),
- Exa: ``EXA_API_KEY``,
- You.com: ``YDC_API_KEY``.

``GPTOSS_SEARCH_PROVIDER`` (searxng | exa | youcom) picks one when several are configured.
"""

from __future__ import annotations

import ipaddress
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from urllib.parse import urlparse

from gptoss.tools.base import ToolError
from gptoss.tools.browser.backend import BackendError, BrowserBackend
from gptoss.tools.browser.display import search_results_page
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
    return httpx.AsyncClient(timeout=timeout, follow_redirects=True, headers={"User-Agent": USER_AGENT},
                             trust_env=not _is_loopback(url))


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
        return [SearchHit(r.get("title") or r.get("url", ""), r["url"], r.get("content") or "")
                for r in results if isinstance(r, dict) and r.get("url")][:topn]


class ExaSearch(SearchProvider):
    name = "exa"
    URL = "https://api.exa.ai/search"

    def __init__(self, api_key: str, url: str | None = None):
        self.api_key = api_key
        self.url = url or self.URL

    async def search(self, query: str, topn: int) -> list[SearchHit]:
        data = await self._post_json(self.url, {"query": query, "numResults": topn,
                                                "contents": {"text": {"maxCharacters": 400}}},
                                     headers={"x-api-key": self.api_key})
        results = data.get("results", []) if isinstance(data, dict) else []
        return [SearchHit(r.get("title") or r["url"], r["url"], (r.get("summary") or r.get("text") or "")[:400])
                for r in results if isinstance(r, dict) and r.get("url")][:topn]


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
    def __init__(self, search_provider: SearchProvider | None = None, timeout: float = 20.0, max_bytes: int = 10 * 2**20):
        self.provider = search_provider
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.source = "web" + (f" ({search_provider.name} search)" if search_provider else "")

    @classmethod
    def from_env(cls) -> WebBackend:
        return cls(provider_from_env())

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
        import httpx

        if not self.can_fetch(url):
            raise BackendError(f"cannot open `{url}`: only http and https URLs can be opened on the web")
        try:
            async with _client(url, self.timeout) as client, client.stream("GET", url) as resp:
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise BackendError(f"`{url}` is larger than {self.max_bytes} bytes")
                    chunks.append(chunk)
                body = b"".join(chunks)
                final_url = str(resp.url)
                status = resp.status_code
                ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                encoding = resp.encoding or "utf-8"
        except httpx.HTTPError as exc:
            raise BackendError(f"could not open `{url}`: {exc}") from None
        if status >= 400:
            raise BackendError(f"could not open `{url}`: HTTP {status}")
        if ctype == "application/pdf" or body[:5] == b"%PDF-":
            return pdf_to_page(body, final_url)
        text = body.decode(encoding, errors="replace")
        if view_source:
            return source_page(text, final_url)
        if ctype in ("text/html", "application/xhtml+xml") or (not ctype and "<html" in text[:1000].lower()):
            return html_to_page(text, final_url, readable=True)
        if ctype in ("text/markdown", "text/x-markdown") or final_url.endswith((".md", ".markdown")):
            return markdown_to_page(text, final_url)
        if ctype.startswith("text/") or ctype in ("application/json", "application/xml", ""):
            return text_to_page(text, final_url)
        raise BackendError(f"`{url}` is {ctype}, which the browser cannot show")
