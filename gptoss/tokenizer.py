"""The o200k_harmony tokenizer: o200k_base BPE plus Harmony's special tokens 199998-201087.

Built on tiktoken. The BPE ranks come, in this order, from:
  1. an explicit file (``Tokenizer.load(bpe_file=...)``),
  2. the checkpoint folder: ``o200k_base.tiktoken`` (our synthetic checkpoints) or the
     ``tokenizer.json`` that the official Hugging Face repositories carry,
  3. ``$GPTOSS_O200K_BASE`` (a file) or ``$TIKTOKEN_ENCODINGS_BASE/o200k_base.tiktoken``,
  4. the ``bpe-openai`` wheel, which bundles ``o200k_base.tiktoken.gz`` (no network needed).
A ``.tiktoken`` file is checked against its published sha256 before use.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
import os
from pathlib import Path

import tiktoken

from gptoss.errors import TokenizerError

O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_BASE_FILE = "o200k_base.tiktoken"
NUM_BPE_RANKS = 199998
VOCAB_SIZE = 201088

# The regex o200k_base splits text with before BPE (from tiktoken's published definition).
O200K_PAT_STR = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


def harmony_special_tokens() -> dict[str, int]:
    """Special tokens of o200k_harmony, exactly as tiktoken defines them."""
    named = {
        "<|endofprompt|>": 200018,  # inherited from o200k_base
        "<|startoftext|>": 199998,
        "<|endoftext|>": 199999,
        "<|reserved_200000|>": 200000,
        "<|reserved_200001|>": 200001,
        "<|return|>": 200002,
        "<|constrain|>": 200003,
        "<|reserved_200004|>": 200004,
        "<|channel|>": 200005,
        "<|start|>": 200006,
        "<|end|>": 200007,
        "<|message|>": 200008,
        "<|reserved_200009|>": 200009,
        "<|reserved_200010|>": 200010,
        "<|reserved_200011|>": 200011,
        "<|call|>": 200012,
    }
    return named | {f"<|reserved_{i}|>": i for i in range(200013, VOCAB_SIZE)}


def _cache_dir() -> Path:
    base = os.environ.get("GPTOSS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gptoss")
    return Path(base)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_tiktoken_bpe(data: bytes, source: str) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file (base64 token, space, rank per line), checking its sha256."""
    digest = _sha256(data)
    if digest != O200K_BASE_SHA256:
        raise TokenizerError(
            f"{source}: sha256 {digest} does not match o200k_base ({O200K_BASE_SHA256}); "
            "the file is corrupt or is another encoding"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if not line:
            continue
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by Hugging Face byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def parse_hf_tokenizer_json(path: Path) -> dict[bytes, int]:
    """Read BPE ranks from the ``tokenizer.json`` of the official Hugging Face repositories."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        vocab = spec["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TokenizerError(f"{path}: not a readable Hugging Face tokenizer.json ({exc})") from None
    decode = {c: b for b, c in _bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for token, rank in vocab.items():
        if rank >= NUM_BPE_RANKS:
            continue
        try:
            ranks[bytes(decode[c] for c in token)] = rank
        except KeyError:
            raise TokenizerError(f"{path}: vocab entry {token!r} is not byte-level BPE") from None
    if len(ranks) != NUM_BPE_RANKS:
        raise TokenizerError(f"{path}: expected {NUM_BPE_RANKS} BPE ranks, found {len(ranks)}")
    return ranks


def bundled_bpe_bytes() -> bytes:
    """The o200k_base ranks bundled in the ``bpe-openai`` wheel (gzip), unpacked."""
    try:
        import bpe_openai
    except ImportError:
        raise TokenizerError(
            "no o200k_base.tiktoken found: install the 'bpe-openai' package, or set GPTOSS_O200K_BASE "
            "to a local copy of o200k_base.tiktoken"
        ) from None
    gz = Path(bpe_openai.__file__).parent / "data" / "o200k_base.tiktoken.gz"
    if not gz.is_file():
        raise TokenizerError(f"{gz}: missing from the installed bpe-openai package")
    return gzip.decompress(gz.read_bytes())


def seed_bpe_file(folder: str | os.PathLike) -> Path:
    """Write ``o200k_base.tiktoken`` into ``folder`` (from the bpe-openai wheel), verified. Returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / O200K_BASE_FILE
    if target.is_file() and _sha256(target.read_bytes()) == O200K_BASE_SHA256:
        return target
    data = bundled_bpe_bytes()
    if _sha256(data) != O200K_BASE_SHA256:
        raise TokenizerError("the o200k_base file bundled in bpe-openai does not match its sha256")
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def _find_bpe_ranks(model_dir: str | os.PathLike | None, bpe_file: str | os.PathLike | None) -> dict[bytes, int]:
    if bpe_file is not None:
        path = Path(bpe_file)
        if not path.is_file():
            raise TokenizerError(f"{path}: tokenizer file not found")
        if path.name == "tokenizer.json":
            return parse_hf_tokenizer_json(path)
        return parse_tiktoken_bpe(path.read_bytes(), str(path))
    if model_dir is not None:
        for sub in (Path(model_dir), Path(model_dir).parent):
            if (sub / O200K_BASE_FILE).is_file():
                return parse_tiktoken_bpe((sub / O200K_BASE_FILE).read_bytes(), str(sub / O200K_BASE_FILE))
            if (sub / "tokenizer.json").is_file():
                return parse_hf_tokenizer_json(sub / "tokenizer.json")
    env_file = os.environ.get("GPTOSS_O200K_BASE")
    if env_file:
        path = Path(env_file)
        if not path.is_file():
            raise TokenizerError(f"GPTOSS_O200K_BASE={env_file}: file not found")
        return parse_tiktoken_bpe(path.read_bytes(), str(path))
    base = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    if base and (Path(base) / O200K_BASE_FILE).is_file():
        path = Path(base) / O200K_BASE_FILE
        return parse_tiktoken_bpe(path.read_bytes(), str(path))
    return _default_ranks()


@functools.lru_cache(maxsize=1)
def _default_ranks() -> dict[bytes, int]:
    path = seed_bpe_file(_cache_dir())
    return parse_tiktoken_bpe(path.read_bytes(), str(path))


class Tokenizer:
    """o200k_harmony. ``encode`` never produces special tokens from text."""

    # Harmony's special tokens, by name.
    START = 200006
    END = 200007
    MESSAGE = 200008
    CHANNEL = 200005
    CONSTRAIN = 200003
    RETURN = 200002
    CALL = 200012
    ENDOFTEXT = 199999
    STARTOFTEXT = 199998

    def __init__(self, encoding: tiktoken.Encoding):
        self.encoding = encoding
        self.vocab_size = VOCAB_SIZE
        self._special_ids = set(encoding._special_tokens.values())

    @classmethod
    def load(cls, model_dir: str | os.PathLike | None = None, bpe_file: str | os.PathLike | None = None) -> "Tokenizer":
        return _load_cached(str(model_dir) if model_dir else None, str(bpe_file) if bpe_file else None)

    def encode(self, text: str) -> list[int]:
        """Encode ``text`` as ordinary text: ``"<|start|>"`` typed by a user stays plain text."""
        return self.encoding.encode(text, allowed_special=set(), disallowed_special=())

    def decode(self, tokens: list[int], errors: str = "replace") -> str:
        return self.decode_bytes(tokens).decode("utf-8", errors=errors)

    def decode_bytes(self, tokens: list[int]) -> bytes:
        return self.encoding.decode_bytes(list(tokens))

    def token_bytes(self, token: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token)

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The longest ordinary token, in bytes: text of ``n`` UTF-8 bytes encodes to at least
        ``ceil(n / max_token_bytes)`` tokens (a bound that needs no tokenizing)."""
        return max(len(b) for b in self.encoding._mergeable_ranks)

    def is_special(self, token: int) -> bool:
        return token in self._special_ids

    def special_id(self, name: str) -> int:
        """The id of a special token given as ``"<|start|>"``."""
        try:
            return self.encoding._special_tokens[name]
        except KeyError:
            raise TokenizerError(f"unknown special token {name!r}") from None


@functools.lru_cache(maxsize=8)
def _load_cached(model_dir: str | None, bpe_file: str | None) -> Tokenizer:
    ranks = _find_bpe_ranks(model_dir, bpe_file)
    encoding = tiktoken.Encoding(
        name="o200k_harmony",
        pat_str=O200K_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens=harmony_special_tokens(),
    )
    return Tokenizer(encoding)
