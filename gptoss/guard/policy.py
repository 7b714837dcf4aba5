"""A deployer's policy: Markdown text the guard model reads, plus what to do when content violates it.

A policy file may begin with front matter between ``---`` lines::

    ---
    name: weapons
    action: block            # block (default) or flag
    categories: W1, W2, W3   # the categories a verdict may name (default: any short string)
    ---
    # Weapons policy
    ...

The policy's version is the first 12 hex digits of the SHA-256 of the whole file, so the audit log says
exactly which text decided.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from gptoss.errors import GptossError

ACTIONS = ("block", "flag")
MAX_POLICY_BYTES = 256 * 1024
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_CATEGORY = re.compile(r"^[A-Za-z0-9_.\-/ ]{1,64}$")


@dataclass(frozen=True)
class Policy:
    name: str
    text: str  # the policy the guard reads (front matter removed)
    version: str
    action: str = "block"
    categories: tuple[str, ...] = ()
    source: str = ""


def parse_policy(raw: str, source: str, default_name: str, default_action: str = "block") -> Policy:
    """A policy from the text of a file; errors name the file and the field."""
    version = hashlib.sha256(raw.encode()).hexdigest()[:12]
    meta: dict[str, str] = {}
    body = raw
    lines = raw.splitlines()
    if lines and lines[0].strip() == "---":
        try:
            end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
        except StopIteration:
            raise GptossError(f"{source}: front matter opened with '---' is never closed") from None
        for n, line in enumerate(lines[1:end], 2):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            if ":" not in text:
                raise GptossError(f"{source}:{n}: expected 'key: value' in the front matter, found {line.strip()!r}")
            key, value = (p.strip() for p in text.split(":", 1))
            if key not in ("name", "action", "categories"):
                raise GptossError(
                    f"{source}:{n}: unknown front matter key {key!r} (expected name, action or categories)"
                )
            meta[key] = value
        body = "\n".join(lines[end + 1 :])
    body = body.strip()
    if not body:
        raise GptossError(f"{source}: the policy text is empty")
    name = meta.get("name") or default_name
    if not _NAME.match(name):
        raise GptossError(f"{source}: name {name!r} may hold only letters, digits, '_', '.' and '-' (at most 64)")
    action = meta.get("action") or default_action
    if action not in ACTIONS:
        raise GptossError(f"{source}: action {action!r}: expected block or flag")
    categories = tuple(c.strip() for c in meta.get("categories", "").split(",") if c.strip())
    bad = [c for c in categories if not _CATEGORY.match(c)]
    if bad:
        raise GptossError(
            f"{source}: category {bad[0]!r} may hold only letters, digits, spaces and '_.-/' (at most 64)"
        )
    return Policy(name, body, version, action, categories, source)


def load_policy(path: str | Path, default_action: str = "block") -> Policy:
    p = Path(path).expanduser()
    if not p.is_file():
        raise GptossError(f"--guard {path}: no such policy file")
    if p.stat().st_size > MAX_POLICY_BYTES:
        raise GptossError(f"--guard {path}: the policy is {p.stat().st_size} bytes; the limit is {MAX_POLICY_BYTES}")
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GptossError(f"--guard {path}: not UTF-8 text") from None
    return parse_policy(raw, str(path), re.sub(r"[^A-Za-z0-9_.\-]", "_", p.stem)[:64] or "policy", default_action)


def load_policies(paths: list[str], default_action: str = "block") -> list[Policy]:
    policies = [load_policy(p, default_action) for p in paths]
    seen: dict[str, str] = {}
    for pol in policies:
        if pol.name in seen:
            raise GptossError(
                f"--guard {pol.source}: policy name {pol.name!r} is also used by {seen[pol.name]}; "
                "set 'name:' in the front matter of one of them"
            )
        seen[pol.name] = pol.source
    return policies
