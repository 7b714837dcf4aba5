"""The audit log: every guard decision as one SQLite row (WAL, so a restarted server keeps them all).

Columns: time, request id, endpoint, stage (input, output, tool, reasoning, moderation), policy name and
version, verdict (violation, category, rationale), the action taken (allow, flag, block, error), the
guard's latency in milliseconds, and an error message when the guard could not decide.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from gptoss.storage import open_sqlite

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    time           REAL NOT NULL,
    request_id     TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    stage          TEXT NOT NULL,
    policy         TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    violation      INTEGER,          -- 1, 0, or NULL when the guard could not decide
    category       TEXT,
    rationale      TEXT,
    action         TEXT NOT NULL,    -- allow | flag | block | error
    latency_ms     REAL NOT NULL,
    error          TEXT
);
CREATE INDEX IF NOT EXISTS decisions_request ON decisions (request_id);
"""


@dataclass
class AuditRecord:
    request_id: str
    endpoint: str
    stage: str
    policy: str
    policy_version: str
    violation: bool | None
    category: str | None
    rationale: str | None
    action: str
    latency_ms: float
    error: str | None = None
    time: float = 0.0
    id: int | None = None


class AuditLog:
    """Thread-safe: one connection under a lock; ``path=None`` keeps the log in memory."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self._lock = threading.Lock()
        self._db = open_sqlite(self.path, "audit log", _SCHEMA, SCHEMA_VERSION)

    def write(self, r: AuditRecord) -> None:
        row = (
            r.time or time.time(),
            r.request_id,
            r.endpoint,
            r.stage,
            r.policy,
            r.policy_version,
            None if r.violation is None else int(r.violation),
            r.category,
            r.rationale,
            r.action,
            r.latency_ms,
            r.error,
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO decisions (time, request_id, endpoint, stage, policy, policy_version, violation, "
                "category, rationale, action, latency_ms, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )

    def records(self, request_id: str | None = None, limit: int = 1000) -> list[AuditRecord]:
        query = (
            "SELECT id, time, request_id, endpoint, stage, policy, policy_version, violation, category, rationale, "
            "action, latency_ms, error FROM decisions"
        )
        args: tuple = ()
        if request_id is not None:
            query += " WHERE request_id = ?"
            args = (request_id,)
        query += " ORDER BY id LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, args + (limit,)).fetchall()
        return [
            AuditRecord(
                request_id=r[2],
                endpoint=r[3],
                stage=r[4],
                policy=r[5],
                policy_version=r[6],
                violation=None if r[7] is None else bool(r[7]),
                category=r[8],
                rationale=r[9],
                action=r[10],
                latency_ms=r[11],
                error=r[12],
                time=r[1],
                id=r[0],
            )
            for r in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
