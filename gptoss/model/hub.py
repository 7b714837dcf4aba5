"""Resolve a model argument: a local folder, or a Hugging Face hub id fetched with huggingface_hub."""

from __future__ import annotations

import os
import re
from pathlib import Path

from gptoss.errors import CheckpointError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# What a gpt-oss repository holds that we use (the HF layout and its tokenizer; not original/ nor metal/).
ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]


def resolve_model_path(model: str) -> Path:
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{model}: expected a checkpoint folder, found a file")
        return path
    if not HUB_ID.match(model) or model.startswith((".", "/")):
        raise CheckpointError(f"{model}: no such folder (and not a hub id like openai/gpt-oss-20b)")
    return download(model)


def download(repo_id: str) -> Path:
    """Fetch ``repo_id`` into the Hugging Face cache (or find it there when offline)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointError("huggingface_hub is not installed; pip install huggingface_hub") from None
    how = (
        f"download it where a network exists (`hf download {repo_id} --local-dir DIR`), copy DIR here and "
        f"pass --model DIR; or try the synthetic demo: `gptoss make-checkpoint --preset demo --out DIR`"
    )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS))
    except (LocalEntryNotFoundError, OSError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        reason = "offline mode (HF_HUB_OFFLINE=1) and not in the local cache" if offline else "no network"
        raise CheckpointError(f"cannot fetch {repo_id}: {reason} ({type(exc).__name__}); {how}") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id}: no such repository on the Hugging Face hub (or it needs a token)") from None
    except HfHubHTTPError as exc:
        raise CheckpointError(f"cannot fetch {repo_id}: {str(exc).splitlines()[0]}; {how}") from None
