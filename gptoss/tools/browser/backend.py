"""What the browser reads from: a backend searches and fetches pages."""

from __future__ import annotations

from abc import ABC, abstractmethod

from gptoss.tools.browser.page import Page


class BackendError(Exception):
    """A search or fetch failed; the message is shown to the model."""


class BrowserBackend(ABC):
    #: a short description for logs ("local corpus /data/docs", "web (searxng)")
    source: str = ""

    @abstractmethod
    async def search(self, query: str, topn: int) -> Page:
        """A results page for ``query`` with at most ``topn`` results."""

    @abstractmethod
    async def fetch(self, url: str, view_source: bool = False) -> Page:
        """The page at ``url``."""

    def can_fetch(self, url: str) -> bool:
        return True

    def can_search(self) -> bool:
        return True


class CombinedBackend(BrowserBackend):
    """Search with the first backend that can; fetch with the first that accepts the URL."""

    def __init__(self, backends: list[BrowserBackend]):
        if not backends:
            raise ValueError("CombinedBackend needs at least one backend")
        self.backends = backends
        self.source = " + ".join(b.source for b in backends)

    async def search(self, query: str, topn: int) -> Page:
        for b in self.backends:
            if b.can_search():
                return await b.search(query, topn)
        raise BackendError("no search backend is configured")

    async def fetch(self, url: str, view_source: bool = False) -> Page:
        for b in self.backends:
            if b.can_fetch(url):
                return await b.fetch(url, view_source)
        raise BackendError(f"cannot open `{url}`: no backend serves it (sources: {self.source})")

    def can_fetch(self, url: str) -> bool:
        return any(b.can_fetch(url) for b in self.backends)

    def can_search(self) -> bool:
        return any(b.can_search() for b in self.backends)
