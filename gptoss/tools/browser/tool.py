"""The ``browser`` tool: ``browser.search``, ``browser.open``, ``browser.find``.

Per conversation it keeps a stack of the pages it displayed; a page's cursor is its index there, so
``【3†L10-L12】`` in the model's answer cites lines 10-12 of the page displayed as ``[3]``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gptoss.harmony import ToolNamespaceConfig
from gptoss.tools.base import Tool, ToolCall, ToolError, ToolResult, ToolUsageError, tool_message
from gptoss.tools.browser.backend import BackendError, BrowserBackend
from gptoss.tools.browser.citations import CitedText, citation_annotations, resolve_citations
from gptoss.tools.browser.display import find_page, page_lines, render
from gptoss.tools.browser.page import Page

FUNCTIONS = ("search", "open", "find")
_WRAP_INLINE = 64 * 1024  # characters of page text wrapped on the event loop; more goes to a thread


def _int(value: Any, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        raise ToolUsageError(f"`{name}` should be an integer, not a boolean")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ToolUsageError(f"`{name}` should be an integer, not `{value!r}`")


class BrowserState:
    """The pages displayed in one conversation (cursor = index)."""

    def __init__(self) -> None:
        self.stack: list[Page] = []
        self.cache: dict[str, Page] = {}

    @property
    def cursor(self) -> int:
        return len(self.stack) - 1

    def push(self, page: Page) -> int:
        self.stack.append(page)
        if page.url and page.kind == "page":
            self.cache[page.url] = page
        return self.cursor

    def pop(self) -> None:
        self.stack.pop()

    def page(self, cursor: int = -1) -> Page:
        if not self.stack:
            raise ToolUsageError("No pages to access! Search or open a page first.")
        if cursor == -1:
            return self.stack[-1]
        if not 0 <= cursor < len(self.stack):
            raise ToolUsageError(f"Cursor `{cursor}` is out of range. Available cursor indices: [0 - {self.cursor}].")
        return self.stack[cursor]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pages": [{"cursor": i, "url": p.url, "title": p.title, "kind": p.kind} for i, p in enumerate(self.stack)]
        }


class BrowserTool(Tool):
    name = "browser"

    def __init__(self, backend: BrowserBackend | None = None, view_tokens: int = 1024, max_search_results: int = 20):
        if backend is None:
            from gptoss.tools.browser.web import WebBackend

            backend = WebBackend.from_env()
        self.backend = backend
        self.view_tokens = view_tokens
        self.max_search_results = max_search_results
        self.pages = BrowserState()

    def namespace(self) -> ToolNamespaceConfig:
        return ToolNamespaceConfig.browser()

    def new_conversation(self) -> BrowserTool:
        return BrowserTool(self.backend, self.view_tokens, self.max_search_results)

    def state(self) -> dict[str, Any]:
        return self.pages.to_dict()

    # ------------------------------------------------------------------ citations
    def citation_target(self, cursor: int) -> tuple[str | None, str | None]:
        if 0 <= cursor < len(self.pages.stack):
            page = self.pages.stack[cursor]
            return page.citation_url, page.title
        return None, None

    def cite(self, text: str, hide_partial: bool = False) -> tuple[str, list[dict[str, Any]]]:
        """Citations ``【cursor†Lx-Ly】`` -> markdown links and ``url_citation`` annotations."""
        cited = self.resolve(text, hide_partial)
        return cited.text, cited.annotations

    def annotate(self, text: str) -> list[dict[str, Any]]:
        """``url_citation`` annotations spanning the citations in ``text``, which is left as it is."""
        return citation_annotations(text, self.citation_target)

    def resolve(self, text: str, hide_partial: bool = False) -> CitedText:
        return resolve_citations(text, self.citation_target, hide_partial)

    # ------------------------------------------------------------------ calls
    def describe_call(self, call: ToolCall) -> dict[str, Any]:
        """The Responses API ``web_search_call`` action this call amounts to."""
        try:
            args = call.json_arguments()
        except ToolUsageError:
            args = {}
        fn = call.function
        if fn == "search":
            return {"action": {"type": "search", "query": str(args.get("query", ""))}}
        if fn == "find":
            url = None
            try:
                url = self.pages.page(_int(args.get("cursor"), "cursor", -1)).citation_url
            except ToolUsageError:
                pass
            return {"action": {"type": "find", "pattern": str(args.get("pattern", "")), "url": url or ""}}
        if fn == "open":
            return {"action": {"type": "open_page", "url": self._target_url(args) or ""}}
        return {"action": {"type": fn or "unknown"}}

    def _target_url(self, args: dict) -> str | None:
        link = args.get("id", -1)
        if isinstance(link, str) and not link.lstrip("-").isdigit():
            return link
        try:
            page = self.pages.page(_int(args.get("cursor"), "cursor", -1))
            link_id = _int(link, "id", -1)
            return page.links.get(link_id) if link_id >= 0 else page.citation_url
        except ToolUsageError:
            return None

    async def run(self, call: ToolCall) -> ToolResult:
        fn = call.function
        meta: dict[str, Any] = dict(self.describe_call(call))
        try:
            if fn not in FUNCTIONS:
                raise ToolUsageError(
                    f"Unknown function `{call.recipient}`: "
                    f"the browser has {', '.join('browser.' + f for f in FUNCTIONS)}"
                )
            args = call.json_arguments()
            if fn == "search":
                text = await self.search(**_only(args, ("query", "topn", "top_n", "source")))
            elif fn == "open":
                text = await self.open(**_only(args, ("id", "cursor", "loc", "num_lines", "view_source", "source")))
            else:
                text = await self.find(**_only(args, ("pattern", "cursor")))
        except (ToolUsageError, BackendError) as exc:
            return ToolResult(
                [tool_message(call.recipient or "browser", str(exc), call.channel)], status="failed", metadata=meta
            )
        page = self.pages.page()
        meta.update(cursor=self.pages.cursor, url=page.citation_url, title=page.title)
        return ToolResult([tool_message(call.recipient, text, call.channel)], metadata=meta)

    async def _show(self, loc: int = 0, num_lines: int = -1) -> str:
        page, cursor = self.pages.page(), self.pages.cursor
        if page.wrapped is None and len(page.text) > _WRAP_INLINE:
            await asyncio.to_thread(page_lines, page)  # a big page is wrapped off the event loop, once
        try:
            return render(page, cursor, loc, num_lines, self.view_tokens)
        except ValueError as exc:
            self.pages.pop()
            raise ToolUsageError(str(exc)) from None

    async def search(self, query: Any = None, topn: Any = 10, top_n: Any = None, source: Any = None) -> str:
        if not isinstance(query, str) or not query.strip():
            raise ToolUsageError("`query` must be a non-empty string")
        n = _int(top_n if top_n is not None else topn, "topn", 10)
        n = max(1, min(n, self.max_search_results))
        try:
            page = await self.backend.search(query, n)
        except BackendError as exc:
            raise BackendError(f"Error during search for `{query}`: {exc}") from None
        self.pages.push(page)
        return await self._show(0)

    async def open(
        self,
        id: Any = -1,
        cursor: Any = -1,
        loc: Any = -1,
        num_lines: Any = -1,
        view_source: Any = False,
        source: Any = None,
    ) -> str:
        loc_n = _int(loc, "loc", -1)
        lines_n = _int(num_lines, "num_lines", -1)
        snippet_line = None
        if isinstance(id, str) and not id.strip().lstrip("-").isdigit():
            url, refresh = id.strip(), True
            current = None
        else:
            link = _int(id, "id", -1)
            current = self.pages.page(_int(cursor, "cursor", -1))
            refresh = False
            if link >= 0:
                if link not in current.links:
                    raise ToolUsageError(f"Invalid link id `{link}`.")
                url = current.links[link]
                if current.snippets and link in current.snippets:
                    snippet_line = current.snippets[link].line
            else:
                url = current.url
        if current is not None and _int(id, "id", -1) < 0 and not view_source:
            page = current  # scroll the page at the cursor
        else:
            page = None if (refresh or view_source) else self.pages.cache.get(url)
            if page is None:
                try:
                    page = await self.backend.fetch(url, view_source=bool(view_source))
                except BackendError as exc:
                    raise BackendError(f"Error fetching URL `{url}`: {exc}") from None
        self.pages.push(page)
        if loc_n < 0:
            loc_n = max(snippet_line - 4, 0) if snippet_line and snippet_line > 4 else 0
        return await self._show(loc_n, lines_n)

    async def find(self, pattern: Any = None, cursor: Any = -1) -> str:
        if not isinstance(pattern, str) or not pattern:
            raise ToolUsageError("`pattern` must be a non-empty string")
        page = self.pages.page(_int(cursor, "cursor", -1))
        if page.kind != "page":
            raise ToolUsageError("Cannot run `find` on search results page or find results page")
        found = (
            find_page(page, pattern)
            if len(page.text) <= _WRAP_INLINE
            else await asyncio.to_thread(find_page, page, pattern)
        )
        self.pages.push(found)
        return await self._show(0)


def _only(args: dict, allowed: tuple[str, ...]) -> dict:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ToolUsageError(f"Unknown argument{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    return args


def make_backend(
    corpus: str | None = None,
    web: bool = True,
    index_path: str | None = None,
    base_url: str | None = None,
    allow_hosts: str | None = None,
) -> BrowserBackend:
    """The usual setup: a local corpus when a folder is given (searched first), and the web for http(s)
    links and, when a provider is configured, for search. ``allow_hosts``: the egress allow-list
    (comma-separated; None: the ``GPTOSS_BROWSER_ALLOW_HOSTS`` variable)."""
    from gptoss.tools.browser.backend import CombinedBackend
    from gptoss.tools.browser.egress import EgressPolicy
    from gptoss.tools.browser.local import LocalCorpus
    from gptoss.tools.browser.web import WebBackend

    where = "--browser-allow-hosts" if allow_hosts is not None else "GPTOSS_BROWSER_ALLOW_HOSTS"
    try:
        policy = EgressPolicy.from_spec(allow_hosts) if allow_hosts is not None else EgressPolicy.from_env()
    except ValueError as exc:
        raise ToolError(f"{where}: {exc}") from None
    backends: list[BrowserBackend] = []
    if corpus:
        backends.append(LocalCorpus(corpus, index_path=index_path, base_url=base_url))
    if web:
        backends.append(WebBackend.from_env(policy))
    if not backends:
        raise ToolError("browser: no corpus folder and the web is disabled: nothing to browse")
    return backends[0] if len(backends) == 1 else CombinedBackend(backends)
