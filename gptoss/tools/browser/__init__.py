"""The browser tool (search, open, find with citations) and its backends: a local SQLite FTS5 corpus
(the default, fully offline) and the web."""

from gptoss.tools.browser.backend import BackendError, BrowserBackend, CombinedBackend
from gptoss.tools.browser.citations import CitedText, resolve_citations
from gptoss.tools.browser.display import find_page, render, wrap_lines
from gptoss.tools.browser.local import LocalCorpus
from gptoss.tools.browser.page import Page, html_to_page, markdown_to_page, pdf_to_page, text_to_page
from gptoss.tools.browser.tool import BrowserState, BrowserTool, make_backend
from gptoss.tools.browser.web import (
    ExaSearch,
    SearchHit,
    SearchProvider,
    SearxngSearch,
    WebBackend,
    YouSearch,
    provider_from_env,
)

__all__ = [
    "BackendError",
    "BrowserBackend",
    "BrowserState",
    "BrowserTool",
    "CitedText",
    "CombinedBackend",
    "ExaSearch",
    "LocalCorpus",
    "Page",
    "SearchHit",
    "SearchProvider",
    "SearxngSearch",
    "WebBackend",
    "YouSearch",
    "find_page",
    "html_to_page",
    "make_backend",
    "markdown_to_page",
    "pdf_to_page",
    "provider_from_env",
    "render",
    "resolve_citations",
    "text_to_page",
    "wrap_lines",
]
