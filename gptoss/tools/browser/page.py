"""Pages as the browser shows them: plain text where each link reads ``【{id}†{text}】`` (or
``【{id}†{text}†{domain}】`` when it leaves the page's site), plus the table of link ids to URLs.

HTML, Markdown, plain text and PDF all become a :class:`Page`. For web pages the readable text is
extracted with trafilatura (main content, links kept); local HTML is converted whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from urllib.parse import unquote, urljoin, urlparse

_BLOCK_TAGS = {
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "dd",
    "details",
    "dialog",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "html",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "tbody",
    "thead",
    "tfoot",
    "tr",
    "ul",
    "br",
    "caption",
}
_PARA_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "table", "ul", "ol", "dl", "figure"}
_SKIP_TAGS = {
    "script",
    "style",
    "noscript",
    "template",
    "head",
    "svg",
    "math",
    "iframe",
    "object",
    "canvas",
    "button",
    "select",
    "input",
    "textarea",
}
_MD_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


@dataclass
class Snippet:
    """Where a link of a results page points inside its target (to open near the match)."""

    line: int | None = None
    text: str = ""


@dataclass
class Page:
    url: str
    title: str
    text: str
    links: dict[int, str] = field(default_factory=dict)
    snippets: dict[int, Snippet] | None = None  # set on search and find result pages
    kind: str = "page"  # page | search | find
    cite_url: str | None = None  # the URL a citation of this page resolves to (None: the page's own)
    wrapped: list[str] | None = field(default=None, repr=False, compare=False)  # display.page_lines' cache

    @property
    def citation_url(self) -> str | None:
        if self.cite_url is not None:
            return self.cite_url or None
        return self.url or None


def domain_of(url: str) -> str:
    return urlparse(url).netloc


def label_of(url: str) -> str:
    """A short name for a URL: its domain, or a file's name for file: URLs."""
    parsed = urlparse(url)
    if parsed.netloc:
        return parsed.netloc
    return PurePosixPath(unquote(parsed.path)).name or url


def clean_text(text: str) -> str:
    """Brackets the link syntax uses are replaced by look-alikes, so page text cannot fake a link."""
    return text.replace("【", "〖").replace("】", "〗").replace("\u200b", "")


class LinkTable:
    def __init__(self, base_url: str):
        self.base_url = base_url
        self.base_domain = domain_of(base_url)
        self.links: dict[int, str] = {}
        self._ids: dict[str, int] = {}

    def id_of(self, href: str) -> int | None:
        url = urljoin(self.base_url, href.strip()) if self.base_url else href.strip()
        return self._ids.get(url.split("#", 1)[0] or url)

    def marker(self, href: str, text: str) -> str:
        text = " ".join(clean_text(text).replace("†", "‡").split())
        href = href.strip()
        if not text:
            return ""
        if not href or href.startswith(("#", "javascript:", "mailto:", "tel:", "data:")):
            return text
        url = urljoin(self.base_url, href) if self.base_url else href
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https", "file"):
            return text
        url = url.split("#", 1)[0] or url
        link_id = self._ids.get(url)
        if link_id is None:
            link_id = self._ids[url] = len(self.links)
            self.links[link_id] = url
        domain = parsed.netloc
        if domain and domain != self.base_domain:
            return f"【{link_id}†{text}†{domain}】"
        return f"【{link_id}†{text}】"


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def markdown_links(text: str, table: LinkTable) -> str:
    """``[text](url)`` -> link markers; images -> ``[Image: alt]``."""

    def sub(m: re.Match) -> str:
        if m.group(1):
            alt = m.group(2).strip()
            return f"[Image: {alt}]" if alt else "[Image]"
        return table.marker(m.group(3), m.group(2))

    return _MD_LINK.sub(sub, text)


def markdown_to_page(text: str, url: str, title: str | None = None) -> Page:
    table = LinkTable(url)
    body = markdown_links(clean_text(text), table)
    if not title:
        m = re.search(r"^#\s+(.+)$", text, flags=re.MULTILINE)
        title = m.group(1).strip() if m else _title_from_url(url)
    return Page(url=url, title=title, text=_tidy(body), links=table.links)


def text_to_page(text: str, url: str, title: str | None = None) -> Page:
    text = clean_text(text.replace("\r\n", "\n"))
    if not title:
        first = next((line.strip() for line in text.split("\n") if line.strip()), "")
        title = first[:80] if first else _title_from_url(url)
    return Page(url=url, title=title, text=_tidy(text))


def _title_from_url(url: str) -> str:
    return label_of(url) or url


def _html_title(root) -> str | None:
    node = root.find(".//title")
    if node is not None and (node.text or "").strip():
        return " ".join(node.text.split())
    h1 = root.find(".//h1")
    if h1 is not None:
        text = " ".join(" ".join(h1.itertext()).split())
        return text or None
    return None


def html_to_page(html: str, url: str, title: str | None = None, readable: bool = False) -> Page:
    """HTML -> Page. ``readable``: keep only the main content (trafilatura), falling back to the whole
    page when the extractor finds nothing."""
    import lxml.html

    html = html.strip()
    if not html:
        return Page(url=url, title=title or _title_from_url(url), text="")
    try:
        root = lxml.html.fromstring(html)
    except Exception:  # noqa: BLE001 - not parseable: show it as text
        return text_to_page(html, url, title)
    title = title or _html_title(root) or _title_from_url(url)
    if readable:
        page = _readable(html, url, title)
        if page is not None:
            return page
    table = LinkTable(url)
    parts: list[str] = []
    _walk(root, parts, table, pre=False)
    text = "".join(parts)
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return Page(url=url, title=title, text=_tidy(text), links=table.links)


def _readable(html: str, url: str, title: str) -> Page | None:
    try:
        import trafilatura
    except ImportError:
        return None
    md = trafilatura.extract(
        html,
        url=url or None,
        output_format="markdown",
        include_links=True,
        include_tables=True,
        include_images=False,
        include_comments=False,
        favor_recall=True,
    )
    if not md or not md.strip():
        return None
    table = LinkTable(url)
    body = markdown_links(clean_text(md), table)
    return Page(url=url, title=title, text=_tidy(body), links=table.links)


def _walk(node, out: list[str], table: LinkTable, pre: bool) -> None:
    tag = node.tag if isinstance(node.tag, str) else ""
    tag = tag.lower()
    if tag in _SKIP_TAGS or not isinstance(node.tag, str):
        if node.tail:
            out.append(node.tail if pre else node.tail.replace("\n", " "))
        return
    if tag == "a" and node.get("href") is not None:
        out.append(table.marker(node.get("href"), " ".join(node.itertext())))
    elif tag == "img":
        alt = (node.get("alt") or node.get("title") or "").strip()
        out.append(f"[Image: {clean_text(alt)}]" if alt else "")
    else:
        block = tag in _BLOCK_TAGS
        gap = 2 if tag in _PARA_TAGS else 1
        if tag == "br":
            out.append("\n")
            block = False
        if block:
            _newlines(out, gap)
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            out.append("#" * int(tag[1]) + " ")
        elif tag == "li":
            out.append("* ")
        elif tag in ("td", "th"):
            out.append(" ")
        is_pre = pre or tag == "pre"
        if node.text:
            text = clean_text(node.text)
            out.append(text if is_pre else text.replace("\n", " "))
        for child in node:
            _walk(child, out, table, is_pre)
        if block:
            _newlines(out, gap)
    if node.tail:
        tail = clean_text(node.tail)
        out.append(tail if pre else tail.replace("\n", " "))


def _newlines(out: list[str], n: int) -> None:
    """End the text so far with at least ``n`` line breaks (blank space between them ignored)."""
    have = 0
    for piece in reversed(out):
        stripped = piece.rstrip(" \t")
        have += len(stripped) - len(stripped.rstrip("\n"))
        if stripped.strip("\n"):
            break
    else:
        if not out:
            return
    if have < n:
        out.append("\n" * (n - have))


def pdf_to_page(data: bytes, url: str, title: str | None = None, default_title: str | None = None) -> Page:
    import io

    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    pages = []
    for i, p in enumerate(reader.pages):
        try:
            pages.append(p.extract_text() or "")
        except Exception:  # noqa: BLE001 - a broken page should not lose the rest
            pages.append(f"[page {i + 1} could not be read]")
    if not title:
        meta = reader.metadata
        title = (meta.title if meta is not None and meta.title else None) or default_title or _title_from_url(url)
    text = "\n\n".join(clean_text(t).strip() for t in pages)
    return Page(url=url, title=title, text=_tidy(text))


def source_page(raw: str, url: str, title: str | None = None) -> Page:
    """``view_source``: the document as it is, with no link processing."""
    return Page(url=url, title=title or _title_from_url(url), text=clean_text(raw).replace("\r\n", "\n"))
