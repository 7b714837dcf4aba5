"""Stored responses (Responses API ``store`` and ``previous_response_id``) in SQLite.

One row a response: its JSON as returned to the client, the full list of input items it was generated
from (earlier turns included, already resolved through ``previous_response_id``) and its output items.
A follow-up request only needs the one row of the response it continues, and a restarted server on the
same file loses nothing. ``path=None`` keeps everything in memory for the life of the process.

Access: a response belongs to the key that created it (``owner``, a digest of the key, never the key):
with several keys configured, one key's responses are invisible to the others (404, as if absent). A
response stored with no key configured (owner ``""``) is readable by anyone who reaches the server.
Expiry: responses older than ``ttl`` seconds are neither returned nor kept (purged as new ones arrive).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from gptoss.storage import open_sqlite

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id           TEXT PRIMARY KEY,
    created_at   REAL NOT NULL,
    response     TEXT NOT NULL,  -- the Response object (JSON)
    input_items  TEXT NOT NULL,  -- JSON list: every input item, earlier turns first
    output_items TEXT NOT NULL   -- JSON list: the response's output items
);
CREATE TABLE IF NOT EXISTS response_events (
    id     TEXT PRIMARY KEY,     -- a response's id
    events TEXT NOT NULL         -- JSON list: every event of its stream, in order
);
CREATE TABLE IF NOT EXISTS response_owners (
    id     TEXT PRIMARY KEY,     -- a response's id
    owner  TEXT NOT NULL         -- who may read or delete it: a digest of the API key that created it
);
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at)
"""


@dataclass
class StoredResponse:
    id: str
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    output_items: list[dict[str, Any]]


class ResponseStore:
    """Thread-safe: one connection shared under a lock (requests are short, writes are one row)."""

    def __init__(self, path: str | os.PathLike | None = None, ttl: float | None = None):
        self.path = None if path is None else os.fspath(path)
        self.ttl = ttl or None  # seconds a response is kept (None or 0: forever)
        self._next_purge = 0.0
        self._lock = threading.Lock()
        self._db = open_sqlite(self.path, "response store", _SCHEMA, SCHEMA_VERSION, durable=False)

    def claim(self, response_id: str, owner: str) -> None:
        """Record who created ``response_id`` (before anything of it is stored)."""
        if owner:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO response_owners (id, owner) VALUES (?, ?)", (response_id, owner)
                )

    def visible(self, response_id: str, owner: str | None) -> bool:
        """Whether ``response_id`` exists, has not expired and may be seen by ``owner`` (None: the server
        itself, which sees everything)."""
        with self._lock:
            row = self._db.execute(
                "SELECT r.created_at, COALESCE(o.owner, '') FROM responses r LEFT JOIN response_owners o "
                "ON o.id = r.id WHERE r.id = ?",
                (response_id,),
            ).fetchone()
        if row is None or (self.ttl is not None and row[0] < time.time() - self.ttl):
            return False
        return owner is None or row[1] in ("", owner)

    def put(
        self,
        response_id: str,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        output_items: list[dict[str, Any]],
    ) -> None:
        row = (response_id, time.time(), json.dumps(response), json.dumps(input_items), json.dumps(output_items))
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (id, created_at, response, input_items, output_items) "
                "VALUES (?, ?, ?, ?, ?)",
                row,
            )
            if self.ttl is not None and row[1] >= self._next_purge:
                self._purge()
                self._next_purge = row[1] + min(60.0, self.ttl / 4)

    def _purge(self) -> None:
        """Drop expired responses (the lock is held)."""
        cutoff = time.time() - self.ttl
        for table in ("response_events", "response_owners"):
            self._db.execute(
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM responses WHERE created_at < ?)", (cutoff,)
            )
        self._db.execute("DELETE FROM responses WHERE created_at < ?", (cutoff,))

    def put_events(self, response_id: str, events: list[dict[str, Any]]) -> None:
        """Every event a stored response streamed, in order (for ``GET ...?stream=true``)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO response_events (id, events) VALUES (?, ?)", (response_id, json.dumps(events))
            )

    def events(self, response_id: str, owner: str | None = None) -> list[dict[str, Any]] | None:
        """The events a stored response streamed, in order (None if it was stored without them)."""
        if not self.visible(response_id, owner):
            return None
        with self._lock:
            row = self._db.execute("SELECT events FROM response_events WHERE id = ?", (response_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def get(self, response_id: str, owner: str | None = None) -> StoredResponse | None:
        """The stored response, if ``owner`` may see it (see :meth:`visible`)."""
        if not self.visible(response_id, owner):
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT response, input_items, output_items FROM responses WHERE id = ?", (response_id,)
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(response_id, json.loads(row[0]), json.loads(row[1]), json.loads(row[2]))

    def delete(self, response_id: str, owner: str | None = None) -> bool:
        if not self.visible(response_id, owner):
            return False
        with self._lock:
            self._db.execute("DELETE FROM response_events WHERE id = ?", (response_id,))
            self._db.execute("DELETE FROM response_owners WHERE id = ?", (response_id,))
            cur = self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return cur.rowcount > 0

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
