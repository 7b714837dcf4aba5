"""The browsing display the model was trained on (as the published reference browser renders it)::

    [3] Giant panda (https://example.org/panda.html)
    **viewing lines [0 - 11] of 40**

    L0: # Giant panda
    L1: The giant panda is a bear endemic to China. See 【0†bamboo】 and 【1†Sichuan†en.wikipedia.org】.
    ...

``[3]`` is the cursor (the page's index in this conversation's page stack); the model cites
``【3†L1-L2】``. Lines are wrapped at 80 characters and numbered from 0; the window shows as many lines
as fit a budget of about ``view_tokens`` tokens (four characters a token).
"""

from __future__ import annotations

import re
import textwrap
from urllib.parse import quote, unquote

from gptoss.tools.browser.page import Page, Snippet

WRAP_WIDTH = 80
CHARS_PER_TOKEN = 4
_LINK = re.compile(r"【\d+†(?P<text>[^†】]+)(?:†[^†】]+)?】")
_LINK_HEAD = re.compile(r"^[^【】]*】")
_LINK_TAIL = re.compile(r"【\d*(?:†(?P<text>[^†】]*)(?:†[^†】]*)?)?$")


_SEGMENT = 4096  # a longer line is wrapped piece by piece: one regex split over megabytes holds the GIL for a second


def wrap_lines(text: str, width: int = WRAP_WIDTH) -> list[str]:
    out: list[str] = []
    for line in text.split("\n"):
        if not line:
            out.append("")
            continue
        out += _wrap(line, width) or [""]
    return out


def _wrap(line: str, width: int) -> list[str]:
    """textwrap.wrap of one line (whitespace kept, so the wrapped lines join back to the line), computed a
    segment at a time for long lines with the same result: wrapping is greedy, so only the last two wrapped
    lines of a segment can depend on what follows the cut (a word cut short may fit where the whole word
    would not); those are wrapped again with the next segment, which starts after whitespace, where the
    word split of the whole line would start a word too."""

    def wrap(text: str) -> list[str]:
        return textwrap.wrap(text, width=width, replace_whitespace=False, drop_whitespace=False, expand_tabs=False)

    line = line.expandtabs()
    out: list[str] = []
    pos = 0
    while len(line) - pos > _SEGMENT:
        lines = wrap(line[pos : pos + _SEGMENT])
        keep = lines[:-2]
        while keep and not keep[-1][-1:].isspace():  # restart after whitespace: where a word starts
            keep.pop()
        if not keep:  # one word of kilobytes: cut it at a line's end (textwrap would break it there too)
            keep = lines[:-2] or lines[:1]
        out += keep
        pos += sum(len(k) for k in keep)
    return out + wrap(line[pos:])


def page_lines(page: Page) -> list[str]:
    """The page's text wrapped for display: computed once (seconds for a page of megabytes), then reused by
    every scroll and find."""
    if page.wrapped is None:
        page.wrapped = wrap_lines(page.text)
    return page.wrapped


def numbered(lines: list[str], start: int) -> str:
    return "\n".join(f"L{start + i}: {line}" for i, line in enumerate(lines))


def strip_links(text: str) -> str:
    """Link markers -> their text (also halves of a marker cut by line wrapping)."""
    text = _LINK_HEAD.sub("", text)
    text = _LINK_TAIL.sub(lambda m: m.group("text") or "", text)
    return _LINK.sub(lambda m: m.group("text"), text)


def end_line(lines: list[str], loc: int, num_lines: int, view_tokens: int) -> int:
    """One past the last line to show from ``loc``."""
    if num_lines > 0:
        return min(loc + num_lines, len(lines))
    budget = view_tokens * CHARS_PER_TOKEN
    used, end = 0, loc
    while end < len(lines):
        used += len(lines[end]) + len(f"L{end}: ") + 1
        if used > budget and end > loc:
            break
        end += 1
    return end


def header(page: Page, cursor: int, first: int, last: int, total: int) -> str:
    title = page.title
    if page.url:
        title += f" ({_shorten(unquote(page.url))})"
    return f"[{cursor}] {title}\n**viewing lines [{first} - {last}] of {total - 1}**\n\n"


def _shorten(text: str, limit: int = 1024) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render(page: Page, cursor: int, loc: int = 0, num_lines: int = -1, view_tokens: int = 1024) -> str:
    """The display of ``page`` from line ``loc``; ValueError when ``loc`` is past the end."""
    lines = page_lines(page)
    total = len(lines)
    loc = max(loc, 0)
    if loc >= total and not (loc == 0 and total == 0):
        raise ValueError(f"Invalid location parameter: `{loc}`. Cannot exceed page maximum of {total - 1}.")
    end = end_line(lines, loc, num_lines, view_tokens)
    return header(page, cursor, loc, end - 1, total) + numbered(lines[loc:end], loc)


def find_page(page: Page, pattern: str, max_results: int = 50, context_lines: int = 4) -> Page:
    """The results of finding ``pattern`` (case-insensitive) in ``page``: each match is a link that
    opens the page near it."""
    needle = pattern.lower()
    lines = strip_links("\n".join(page_lines(page))).split("\n")
    chunks: list[str] = []
    snippets: dict[int, Snippet] = {}
    i = 0
    while i < len(lines) and len(chunks) < max_results:
        if needle and needle in lines[i].lower():
            n = len(chunks)
            snippet = "\n".join(lines[i : i + context_lines])
            chunks.append(f"# 【{n}†match at L{i}】\n{snippet}")
            snippets[n] = Snippet(line=i, text=snippet)
            i += context_lines
        else:
            i += 1
    text = "\n\n".join(chunks) if chunks else f"No `find` results for pattern: `{pattern}`"
    return Page(
        url=f"{page.url}/find?pattern={quote(pattern)}",
        title=f"Find results for text: `{pattern}` in `{page.title}`",
        text=text,
        links={n: page.url for n in snippets},
        snippets=snippets,
        kind="find",
        cite_url=page.citation_url or "",
    )


def search_results_page(query: str, hits: list[tuple[str, str, str, int | None]], source_url: str = "") -> Page:
    """A results page: ``hits`` are (title, url, snippet, line of the match or None)."""
    from gptoss.tools.browser.page import LinkTable, clean_text

    table = LinkTable(source_url)
    items = []
    snippets: dict[int, Snippet] = {}
    for title, url, snippet, line in hits:
        marker = table.marker(url, title or url)
        link_id = table.id_of(url)
        if link_id is not None:
            snippets[link_id] = Snippet(line=line, text=snippet)
        text = " ".join(clean_text(snippet).split())
        items.append(f"* {marker} {text}".rstrip())
    body = "# Search Results\n\n" + ("\n".join(items) if items else f"No results for `{query}`.")
    return Page(
        url=source_url, title=query, text=body, links=table.links, snippets=snippets, kind="search", cite_url=""
    )
