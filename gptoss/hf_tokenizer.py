"""The Hugging Face tokenizer files of o200k_harmony: ``tokenizer.json`` and ``tokenizer_config.json``.

The official openai/gpt-oss repositories carry these two files, and tools that read a checkpoint in the
Hugging Face layout (transformers' ``AutoTokenizer``, llama.cpp's ``convert_hf_to_gguf.py``) need them.
They are built offline from the o200k_base BPE ranks (see ``gptoss.tokenizer``) with transformers' own
tiktoken converter, plus Harmony's special tokens 199998-201087 under their names. Building takes several
seconds, so the result is cached under ``$GPTOSS_CACHE`` (default ``~/.cache/gptoss``) and copied from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from gptoss.errors import TokenizerError
from gptoss.tokenizer import NUM_BPE_RANKS, O200K_PAT_STR, VOCAB_SIZE, _cache_dir, harmony_special_tokens, seed_bpe_file

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# What the official repositories name as the tokenizer's bos / eos / pad tokens.
BOS, EOS, PAD = "<|startoftext|>", "<|return|>", "<|endoftext|>"


def hf_special_tokens() -> dict[str, int]:
    """Harmony's special tokens by id, one name an id. (tiktoken's o200k_harmony also answers to
    ``<|reserved_200018|>`` for 200018; the official files name it ``<|endofprompt|>`` only.)"""
    by_id: dict[int, str] = {}
    for name, i in harmony_special_tokens().items():  # the named tokens come first
        by_id.setdefault(i, name)
    return {name: i for i, name in sorted(by_id.items())}


def tokenizer_config() -> dict:
    """``tokenizer_config.json`` in the shape the official repositories carry (without the chat template:
    gptoss renders Harmony itself)."""
    specials = hf_special_tokens().items()
    return {
        "added_tokens_decoder": {
            str(i): {
                "content": name,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for name, i in specials
        },
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "extra_special_tokens": {},
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "pad_token": PAD,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def build_tokenizer_json(path: Path) -> None:
    """Write o200k_harmony's ``tokenizer.json`` to ``path`` with transformers' ``TikTokenConverter``."""
    try:
        from transformers.convert_slow_tokenizer import TikTokenConverter
    except ImportError as exc:
        raise TokenizerError(
            f"writing {TOKENIZER_JSON} needs transformers and tokenizers (pip install transformers): {exc}"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        bpe = seed_bpe_file(tmp)
        # Added tokens take the ids after the BPE ranks in the order given: sort them by id.
        specials = hf_special_tokens()
        tokenizer = TikTokenConverter(
            vocab_file=str(bpe), pattern=O200K_PAT_STR, extra_special_tokens=specials
        ).converted()
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    for name, i in specials.items():
        if vocab.get(name) != i:
            raise TokenizerError(f"{TOKENIZER_JSON}: the converter gave {name} id {vocab.get(name)}, expected {i}")
    if len(vocab) != VOCAB_SIZE or tokenizer.get_vocab_size(with_added_tokens=False) != NUM_BPE_RANKS:
        raise TokenizerError(f"{TOKENIZER_JSON}: the converter gave {len(vocab)} tokens, expected {VOCAB_SIZE}")
    tokenizer.save(str(path))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached_tokenizer_json() -> Path:
    """The cached ``tokenizer.json``, built on first use; a sidecar sha256 guards against a torn or edited copy."""
    try:
        import tokenizers
        import transformers

        tag = f"transformers{transformers.__version__}-tokenizers{tokenizers.__version__}"
    except ImportError as exc:
        raise TokenizerError(
            f"writing {TOKENIZER_JSON} needs transformers and tokenizers (pip install transformers): {exc}"
        ) from None
    folder = _cache_dir() / "o200k_harmony" / tag
    target, digest_file = folder / TOKENIZER_JSON, folder / (TOKENIZER_JSON + ".sha256")
    if target.is_file() and digest_file.is_file() and digest_file.read_text().strip() == _sha256_file(target):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".partial")
    os.close(fd)
    try:
        build_tokenizer_json(Path(tmp))
        digest = _sha256_file(Path(tmp))
        os.replace(tmp, target)  # atomic: a concurrent builder writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    digest_tmp = digest_file.with_suffix(f".{os.getpid()}.tmp")
    digest_tmp.write_text(digest + "\n")
    os.replace(digest_tmp, digest_file)
    return target


def write_hf_tokenizer_files(folder: str | os.PathLike) -> list[Path]:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``folder``. Returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / TOKENIZER_JSON
    tmp = out.with_suffix(".json.partial")
    shutil.copyfile(_cached_tokenizer_json(), tmp)
    os.replace(tmp, out)
    config = folder / TOKENIZER_CONFIG
    config.write_text(json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n")
    return [out, config]
