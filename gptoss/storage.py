"""The SQLite databases gptoss keeps (the Responses store, the guard's audit log): opened one way."""

from __future__ import annotations

import os
import sqlite3


def open_sqlite(path: str | None, what: str, schema: str, version: int, durable: bool = True) -> sqlite3.Connection:
    """A connection to the database at ``path`` (None: in memory) with ``schema`` (a script of ``IF NOT EXISTS``
    statements) created and its ``user_version`` set to ``version``; the caller shares it under its own lock.

    On a file: write-ahead logging (readers never wait for the writer), and ``durable=False`` lets a commit skip
    the fsync of each write (a crash may lose the last writes, never corrupt the file). A database written by a
    newer gptoss (a higher ``user_version``) is refused, naming ``what`` it is."""
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    db = sqlite3.connect(path or ":memory:", check_same_thread=False, isolation_level=None)
    if path is not None:
        db.execute("PRAGMA journal_mode=WAL")
        if not durable:
            db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found > version:
        db.close()
        raise RuntimeError(
            f"the {what} {path} was written by a newer gptoss (schema {found}; this one reads up to {version})"
        )
    db.executescript(schema)
    db.execute(f"PRAGMA user_version={version}")
    return db
