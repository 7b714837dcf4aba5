"""Citations -> URL annotations.

The model cites what it read as ``【{cursor}†L{first}(-L{last})?】`` (the cursor is the page's index in
the conversation's page stack). For an API answer each citation whose page has a URL becomes a
markdown link ``([label](url))`` and an annotation in the shape of the OpenAI Responses API's
``url_citation`` (``start_index`` / ``end_index`` locate the link in the new text)::

    {"type": "url_citation", "start_index": 31, "end_index": 72, "url": "https://...", "title": "..."}

Citations of unknown cursors, or of pages without a URL (search results), are left as they are.
While streaming, a citation may be cut by the end of the text so far: ``partial`` says so, and
``hide_partial`` holds the unfinished part back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gptoss.tools.browser.page import label_of

CITATION = re.compile(r"【(?P<cursor>\d+)†(?P<ref>[^†】]+)(?:†[^†】]*)?】")
PARTIAL = re.compile(r"【[^【】]*$")


@dataclass
class CitedText:
    text: str
    annotations: list[dict[str, Any]] = field(default_factory=list)
    partial: bool = False


def resolve_citations(
    text: str, lookup: Callable[[int], tuple[str | None, str | None]], hide_partial: bool = False
) -> CitedText:
    """Replace citations in ``text``. ``lookup(cursor)`` gives (url, title) of that page, or (None, None)."""
    partial = PARTIAL.search(text) is not None
    if hide_partial and partial:
        text = PARTIAL.sub("", text)
    out: list[str] = []
    annotations: list[dict[str, Any]] = []
    pos = 0
    length = 0
    for m in CITATION.finditer(text):
        url, title = lookup(int(m.group("cursor")))
        before = text[pos : m.start()]
        out.append(before)
        length += len(before)
        if url:
            label = label_of(url)
            link = f" ([{label}]({url})) "
            ann: dict[str, Any] = {
                "type": "url_citation",
                "start_index": length,
                "end_index": length + len(link),
                "url": url,
                "title": title or label,
            }
            annotations.append(ann)
            out.append(link)
            length += len(link)
        else:
            out.append(m.group(0))
            length += len(m.group(0))
        pos = m.end()
    out.append(text[pos:])
    return CitedText("".join(out), annotations, partial)


def citation_annotations(text: str, lookup: Callable[[int], tuple[str | None, str | None]]) -> list[dict[str, Any]]:
    """``url_citation`` annotations over the citations of ``text`` as it stands (the text is not
    rewritten, so streamed deltas still add up to it): each annotation spans its ``【cursor†Lx-Ly】``."""
    annotations = []
    for m in CITATION.finditer(text):
        url, title = lookup(int(m.group("cursor")))
        if url:
            annotations.append(
                {
                    "type": "url_citation",
                    "start_index": m.start(),
                    "end_index": m.end(),
                    "url": url,
                    "title": title or label_of(url),
                }
            )
    return annotations
