"""A local corpus: a folder of HTML, Markdown, text and PDF files, indexed into SQLite FTS5 and ranked
with BM25. Works fully offline.

The index lives in ``~/.cache/gptoss/corpus/`` (or ``index_path``); indexing is incremental (files are
re-read only when their size or modification time changed) and shows a progress bar on a terminal.
Each document is split into passages of a few wrapped lines; a search returns the best documents, each
with its best passage, and opening a result shows the document from just before that passage.
Documents are addressed by ``file://`` URLs, or by ``base_url`` + their relative path when one is given
(for a corpus mirrored from a web site).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sqlite3
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from gptoss.tools.base import ToolError
from gptoss.tools.browser.backend import BackendError, BrowserBackend
from gptoss.tools.browser.display import page_lines, search_results_page, strip_links, wrap_lines
from gptoss.tools.browser.page import Page, html_to_page, markdown_to_page, pdf_to_page, source_page, text_to_page

SUFFIXES = {
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".pdf": "pdf",
}
PASSAGE_LINES = 12
SCHEMA_VERSION = "1"


@dataclass
class IndexStats:
    documents: int
    indexed: int
    removed: int
    skipped: list[str]


def load_document(path: Path, url: str) -> Page:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind == "pdf":
        return pdf_to_page(path.read_bytes(), url, default_title=path.stem)
    text = path.read_bytes().decode("utf-8", errors="replace")
    if kind == "html":
        return html_to_page(text, url)
    if kind == "markdown":
        return markdown_to_page(text, url)
    return text_to_page(text, url, title=path.stem if kind == "text" else None)


def _loaded(path: Path, url: str) -> Page:
    page = load_document(path, url)
    page_lines(page)  # wrapped here, off the event loop
    return page


def fts_query(query: str) -> str:
    """Any of the query's words (BM25 ranks documents with more, and rarer, of them first)."""
    words = re.findall(r"\w+", query.lower())
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words))


class LocalCorpus(BrowserBackend):
    def __init__(
        self,
        root: str | os.PathLike,
        index_path: str | os.PathLike | None = None,
        base_url: str | None = None,
        progress: bool | None = None,
    ):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise ToolError(
                f"browser corpus: {root} is not a folder (expected a folder of HTML, Markdown, text or PDF files)"
            )
        if index_path is None:
            key = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
            cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptoss" / "corpus"
            index_path = cache / f"{self.root.name}-{key}.sqlite"
        self.index_path = Path(index_path)
        self.base_url = base_url.rstrip("/") + "/" if base_url else None
        self.progress = progress
        self.source = f"local corpus {self.root}"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._indexed = False

    # ------------------------------------------------------------------ addressing
    def url_for(self, path: Path) -> str:
        rel = path.resolve().relative_to(self.root).as_posix()
        if self.base_url:
            return self.base_url + quote(rel)
        return "file://" + quote(str(self.root / rel))

    def path_for(self, url: str) -> Path | None:
        """The corpus file a URL names, or None (also for anything outside the corpus folder)."""
        if self.base_url and url.startswith(self.base_url):
            candidate = self.root / unquote(url[len(self.base_url) :].split("?", 1)[0].split("#", 1)[0])
        else:
            parsed = urlparse(url)
            if parsed.scheme == "file":
                candidate = Path(unquote(parsed.path))
            elif not parsed.scheme:
                candidate = self.root / unquote(parsed.path)
            else:
                return None
        try:
            resolved = candidate.resolve()
            rel = resolved.relative_to(self.root)
        except (ValueError, OSError, RuntimeError):  # outside the folder, or a symlink loop
            return None
        if not self.indexable(rel):
            return None  # what the index leaves out (.env, keys, dotfiles) is never opened either
        return resolved

    @staticmethod
    def indexable(rel: Path) -> bool:
        """Whether a path relative to the corpus folder is a document: no hidden part, a known suffix."""
        return (
            bool(rel.parts) and not any(part.startswith(".") for part in rel.parts) and rel.suffix.lower() in SUFFIXES
        )

    def can_fetch(self, url: str) -> bool:
        return self.path_for(url) is not None

    # ------------------------------------------------------------------ index
    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.index_path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.index_path, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT)")
            version = db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if version is None or version[0] != SCHEMA_VERSION:
                db.executescript("DROP TABLE IF EXISTS docs; DROP TABLE IF EXISTS passages;")
            db.execute(
                "CREATE TABLE IF NOT EXISTS docs(id INTEGER PRIMARY KEY, path TEXT UNIQUE, mtime REAL, size INTEGER,"
                " title TEXT, url TEXT)"
            )
            db.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS passages USING fts5(title, body, doc UNINDEXED, line UNINDEXED,"
                " tokenize='porter unicode61 remove_diacritics 2')"
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES('version', ?)", (SCHEMA_VERSION,))
            db.commit()
            self._db = db
        return self._db

    def files(self) -> list[Path]:
        """The documents under the folder. Symbolic links are skipped, never followed: one pointing out
        of the folder must neither be read nor break the index."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):  # does not descend into linked folders
            dirnames[:] = sorted(
                d for d in dirnames if not d.startswith(".") and not os.path.islink(os.path.join(dirpath, d))
            )
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if self.indexable(path.relative_to(self.root)) and not path.is_symlink() and path.is_file():
                    out.append(path)
        return out

    def index(self) -> IndexStats:
        """Bring the index up to date with the folder."""
        from tqdm import tqdm

        with self._lock:
            db = self._connect()
            files = self.files()
            known = {row[0]: (row[1], row[2], row[3]) for row in db.execute("SELECT path, mtime, size, id FROM docs")}
            seen: set[str] = set()
            todo = []
            for path in files:
                rel = path.relative_to(self.root).as_posix()
                seen.add(rel)
                st = path.stat()
                old = known.get(rel)
                if old is None or old[0] != st.st_mtime or old[1] != st.st_size:
                    todo.append((path, rel, st))
            removed = [(rel, v[2]) for rel, v in known.items() if rel not in seen]
            for _rel, doc_id in removed:
                db.execute("DELETE FROM passages WHERE doc = ?", (doc_id,))
                db.execute("DELETE FROM docs WHERE id = ?", (doc_id,))
            show = self.progress if self.progress is not None else sys.stderr.isatty()
            skipped = []
            for path, rel, st in tqdm(
                todo, desc=f"indexing {self.root.name}", unit="file", disable=not show or not todo
            ):
                url = self.url_for(path)
                try:
                    page = load_document(path, url)
                except Exception as exc:  # noqa: BLE001 - one unreadable file should not stop the index
                    skipped.append(f"{rel}: {exc}")
                    continue
                old = known.get(rel)
                if old is not None:
                    db.execute("DELETE FROM passages WHERE doc = ?", (old[2],))
                    db.execute("DELETE FROM docs WHERE id = ?", (old[2],))
                cur = db.execute(
                    "INSERT INTO docs(path, mtime, size, title, url) VALUES (?, ?, ?, ?, ?)",
                    (rel, st.st_mtime, st.st_size, page.title, url),
                )
                doc_id = cur.lastrowid
                lines = strip_links("\n".join(wrap_lines(page.text))).split("\n")
                rows = []
                for start in range(0, max(len(lines), 1), PASSAGE_LINES):
                    body = "\n".join(lines[start : start + PASSAGE_LINES]).strip()
                    if body or start == 0:
                        rows.append((page.title, body, doc_id, start))
                db.executemany("INSERT INTO passages(title, body, doc, line) VALUES (?, ?, ?, ?)", rows)
            db.commit()
            count = db.execute("SELECT count(*) FROM docs").fetchone()[0]
            self._indexed = True
            return IndexStats(count, len(todo) - len(skipped), len(removed), skipped)

    def _search(self, query: str, topn: int) -> list[tuple[str, str, str, int | None]]:
        if not self._indexed:
            self.index()
        expr = fts_query(query)
        if not expr:
            raise BackendError(f"nothing to search for in `{query}`")
        with self._lock:
            rows = (
                self._connect()
                .execute(
                    "SELECT d.title, d.url, snippet(passages, 1, '', '', '…', 24), p.line,"
                    " bm25(passages, 4.0, 1.0) AS score"
                    " FROM passages p JOIN docs d ON d.id = p.doc WHERE passages MATCH ? ORDER BY score LIMIT ?",
                    (expr, max(topn, 1) * 20),
                )
                .fetchall()
            )
        hits, seen = [], set()
        for title, url, snippet, line, _score in rows:
            if url in seen:
                continue
            seen.add(url)
            hits.append((title, url, snippet.replace("\n", " "), int(line)))
            if len(hits) >= topn:
                break
        return hits

    async def search(self, query: str, topn: int) -> Page:
        hits = await asyncio.to_thread(self._search, query, topn)
        return search_results_page(query, hits)

    async def fetch(self, url: str, view_source: bool = False) -> Page:
        path = self.path_for(url)
        if path is None:
            raise BackendError(f"`{url}` is not in the local corpus")
        if not path.is_file():
            raise BackendError(f"`{url}`: no such document in the local corpus")
        page_url = self.url_for(path)
        if view_source and SUFFIXES.get(path.suffix.lower()) != "pdf":
            raw = await asyncio.to_thread(path.read_text, "utf-8", "replace")
            return source_page(raw, page_url, path.name)
        return await asyncio.to_thread(_loaded, path, page_url)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
