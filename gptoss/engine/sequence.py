"""One request as the engine tracks it."""

from __future__ import annotations

import enum
import itertools
import random

import torch

from gptoss.engine.sampling import SamplingParams, TokenLogprobs

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        cache_salt: str | bytes | None = None,
    ):
        self.request_id = request_id or f"req-{next(_ids)}"
        self.prompt_ids = list(prompt_ids)
        self.output_ids: list[int] = []
        self.logprobs: list[TokenLogprobs | None] = []
        # params.prompt_logprobs: entry j is prompt token j's log-probability given those before (None for the first)
        self.prompt_logprobs: list[TokenLogprobs | None] | None = [None] if params.prompt_logprobs is not None else None
        self.params = params
        self.lora = params.lora  # LoRA adapter name (None: the base model); its keys and values differ
        self.status = Status.WAITING
        self.slot: int | None = None
        self.num_cached = 0  # tokens whose keys/values are in the cache
        self.finish_reason: str | None = None  # "stop", "length", "abort" or "error"
        self.error: BaseException | None = None  # why processing this request raised (finish_reason "error")
        # Cached prefixes are shared only among sequences with the same salt (the server: the API key's
        # identity; a LoRA adapter's name may be mixed in, since its keys and values differ).
        self.cache_salt = cache_salt
        self.cached_tokens: int | None = None  # prompt tokens found in the prefix cache when first admitted
        self.counted = False  # added to the engine's prefix-cache statistics
        self.seed = params.seed if params.seed is not None else random.getrandbits(63)
        self._generator: torch.Generator | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        """This request's random stream, on the device its logits are sampled on."""
        if self._generator is None or self._generator.device != torch.device(device):
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def is_finished(self) -> bool:
        return self.status == Status.FINISHED

    @property
    def wants_prompt_logits(self) -> bool:
        """The next chunk predicts prompt tokens whose log-probabilities were asked for (and not yet taken)."""
        return (
            self.prompt_logprobs is not None
            and len(self.prompt_logprobs) < len(self.prompt_ids)
            and self.num_cached < len(self.prompt_ids) - 1
        )

    def pending(self) -> list[int]:
        """Tokens not yet in the cache (the whole prompt at first, then the last sampled token)."""
        return self.token_ids[self.num_cached :]
