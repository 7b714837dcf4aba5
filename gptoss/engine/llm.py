"""The engine loop (schedule -> run -> postprocess) and the Python API built on it.

from gptoss.engine import LLM, SamplingParams
llm = LLM("openai/gpt-oss-20b")            # or a local folder
outs = llm.generate(["Hello"], SamplingParams(max_tokens=32))
"""

from __future__ import annotations

import atexit
import codecs
import logging
import os
from dataclasses import dataclass, field
from typing import Iterator

import torch

from gptoss.engine import ranks
from gptoss.engine.distributed import RankFailed
from gptoss.engine.model_runner import ModelRunner, runner_kwargs
from gptoss.engine.sampling import SamplingParams, TokenLogprobs, sample
from gptoss.engine.scheduler import Scheduler
from gptoss.engine.sequence import Sequence
from gptoss.errors import GptossError
from gptoss.model.transformer import Transformer
from gptoss.tokenizer import Tokenizer

log = logging.getLogger("gptoss.engine")


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # SamplingParams.prompt_logprobs: one per prompt token


@dataclass
class TokenEvent:
    """One generated token of a streamed request."""

    token: int
    text: str  # the text this token completes (UTF-8 split across tokens is held back until whole)
    logprobs: TokenLogprobs | None
    finish_reason: str | None  # set on the last token


class LLMEngine:
    def __init__(
        self,
        model: Transformer,
        max_batch: int = 8,
        max_model_len: int | None = None,
        max_prefill_tokens: int = 2048,
        kv_cache: str = "auto",
        kv_cache_tokens: int | None = None,
        cuda_graphs: bool | None = None,
        channel=None,
        prefix_caching: bool = True,
    ):
        """``kv_cache_tokens``: positions the KV cache holds, one pool shared by every sequence (default
        :func:`~gptoss.engine.model_runner.default_kv_tokens`: from free memory). ``max_model_len``: the
        longest sequence (default: the model's context). ``prefix_caching``: keep the KV of finished requests
        (prompt and output) in full blocks, reused by any later request that starts with the same tokens
        under the same cache salt. ``channel``: rank 0's :class:`~gptoss.engine.distributed.StepChannel`
        when ``model`` is one shard of a tensor parallel model (the other ranks build their runner from
        :func:`~gptoss.engine.ranks.group_runner_kwargs`)."""
        self.model = model
        self.max_model_len = min(
            max_model_len or model.config.max_position_embeddings, model.config.max_position_embeddings
        )
        self.runner = ModelRunner(
            model,
            channel=channel,
            **runner_kwargs(
                max_batch,
                self.max_model_len,
                max_prefill_tokens,
                kv_cache,
                kv_cache_tokens,
                cuda_graphs,
                prefix_caching,
            ),
        )
        self.scheduler = Scheduler(max_batch, max_prefill_tokens, blocks=self.runner.blocks)
        self.capacity = self.runner.local_cache.capacity_tokens
        self.prefix_hits = 0  # requests that reused a cached prefix
        self.prompt_tokens = 0  # prompt tokens of admitted requests
        self.cached_tokens = 0  # of which found in the prefix cache
        self.sequences: dict[str, Sequence] = {}
        # Requests whose processing raised, each failed alone (finish_reason "error", ``seq.error``) while
        # the rest of the batch goes on; the async engine drains this list after each step.
        self.failures: list[Sequence] = []

    @property
    def prefix_hit_rate(self) -> float:
        """Share of admitted prompt tokens that came from the prefix cache."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def add_request(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        cache_salt: str | bytes | None = None,
    ) -> Sequence:
        """Queue a request. ``cache_salt``: cached prefixes are shared only among requests with the same salt
        (the server passes the API key's identity); None for all requests of the Python API."""
        if not prompt_ids:
            raise GptossError("prompt is empty: at least one token is needed")
        vocab = self.model.config.vocab_size
        bad = [t for t in prompt_ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise GptossError(f"prompt token {bad[0]!r} is outside the vocabulary [0, {vocab})")
        if len(prompt_ids) >= self.max_model_len:
            raise GptossError(
                f"prompt has {len(prompt_ids)} tokens; the context holds {self.max_model_len} (max_model_len), "
                "leaving no room to generate"
            )
        if len(prompt_ids) >= self.capacity:
            raise GptossError(
                f"prompt has {len(prompt_ids)} tokens; the KV cache holds {self.capacity} (kv_cache_tokens), "
                "leaving no room to generate: give the cache more tokens or memory"
            )
        if params.lora is not None:
            lora = getattr(self.model, "lora", None)
            if lora is None:
                raise GptossError(f"unknown LoRA adapter {params.lora!r} (none is loaded)")
            lora.slot(params.lora)  # an unknown name is refused here, before the request is queued
            # An adapter computes other keys and values from the same tokens: its cached blocks are its own.
            cache_salt = (
                b"lora\0"
                + params.lora.encode()
                + b"\0"
                + (cache_salt.encode() if isinstance(cache_salt, str) else (cache_salt or b""))
            )
        seq = Sequence(prompt_ids, params, request_id, cache_salt=cache_salt)
        if seq.request_id in self.sequences:
            raise GptossError(f"request id {seq.request_id!r} is already in use")
        self.sequences[seq.request_id] = seq
        self.scheduler.add(seq)
        return seq

    def clear_prefix_cache(self) -> None:
        """Forget every cached prefix (running requests keep their blocks)."""
        self.runner.cache.forget_cached()

    def abort(self, request_id: str) -> None:
        """Stop a request and free its cache slot (e.g. when its client disconnects)."""
        seq = self.sequences.pop(request_id, None)
        if seq is not None and not seq.is_finished:
            self.scheduler.finish(seq, "abort")

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def step(self) -> list[tuple[Sequence, int]]:
        """One forward pass. Returns ``(sequence, new token)`` for each sequence that produced a token."""
        work, is_prefill = self.scheduler.schedule()
        if not work:
            return []
        for seq, _ in work:
            if not seq.counted and seq.cached_tokens is not None:
                seq.counted = True
                self.prompt_tokens += len(seq.prompt_ids)
                self.cached_tokens += seq.cached_tokens
                self.prefix_hits += bool(seq.cached_tokens)
        work, logits = self._run_isolated(work)
        ready = [(i, seq) for i, (seq, _) in enumerate(work) if seq.num_cached == len(seq)]
        if not ready:
            return []
        rows = logits[[i for i, _ in ready]]
        seqs, tokens, logprobs = self._sample_isolated(rows, [seq for _, seq in ready])
        produced = []
        for seq, token, lp in zip(seqs, tokens, logprobs):
            seq.output_ids.append(token)
            seq.logprobs.append(lp)
            produced.append((seq, token))
            p = seq.params
            if not p.ignore_stop and token in p.stop_token_ids:
                self._finish(seq, "stop")
            elif len(seq.output_ids) >= p.max_tokens or len(seq) >= min(self.max_model_len, self.capacity):
                self._finish(seq, "length")
        return produced

    def _run_isolated(self, work: list[tuple[Sequence, int]]) -> tuple[list[tuple[Sequence, int]], torch.Tensor | None]:
        """The forward pass of ``work``. If the batch raises, each sequence runs alone and only those that
        raise again fail (the others' cache writes are simply redone: nothing advanced)."""
        try:
            logits = self.runner.run(work)
        except RankFailed:  # not this batch's fault: no rank can run anything any more
            raise
        except Exception as exc:
            if len(work) == 1:
                self._fail(work[0][0], exc)
                return [], None
        else:
            self._take_prompt_logprobs(work)
            return work, logits
        kept, rows = [], []
        for item in work:
            try:
                rows.append(self.runner.run([item]))
                kept.append(item)
            except RankFailed:
                raise
            except Exception as exc:
                self._fail(item[0], exc)
                continue
            self._take_prompt_logprobs([item])
        return kept, (torch.cat(rows) if rows else None)

    def _take_prompt_logprobs(self, work: list[tuple[Sequence, int]]) -> None:
        """After a prefill chunk: the log-probabilities of the prompt tokens it predicted (position ``p``'s
        logits give token ``p + 1``), for the requests that asked (``SamplingParams.prompt_logprobs``).
        Positions already taken (a preempted request computes its prompt again) are skipped."""
        full = self.runner.full_logits
        if not full:
            return
        for (seq, n), rows in zip(work, full):
            if rows is None:
                continue
            start = seq.num_cached - n  # the chunk's first position (run() has advanced num_cached)
            first = len(seq.prompt_logprobs) - 1 - start  # the first row whose target is not taken yet
            stop = min(n, len(seq.prompt_ids) - 1 - start)  # rows whose target is a prompt token
            if first >= stop:
                continue
            lp = torch.log_softmax(rows[first:stop].float(), dim=-1)
            targets = seq.prompt_ids[start + first + 1 : start + stop + 1]
            chosen = lp.gather(1, torch.tensor(targets, device=lp.device).unsqueeze(1)).squeeze(1).tolist()
            k = seq.params.prompt_logprobs
            tops = torch.topk(lp, k, dim=-1) if k else None
            for i, (token, value) in enumerate(zip(targets, chosen)):
                top = list(zip(tops.indices[i].tolist(), tops.values[i].tolist())) if tops is not None else []
                seq.prompt_logprobs.append(TokenLogprobs(token, value, top))

    def _sample_isolated(self, rows: torch.Tensor, seqs: list[Sequence]) -> tuple[list[Sequence], list[int], list]:
        """Sample the next token of each sequence; one whose generator, logits processors or sampling
        raises fails alone."""
        gens, ok = [], []
        for i, seq in enumerate(seqs):
            try:
                gens.append(seq.generator(rows.device))
                ok.append(i)
            except Exception as exc:
                self._fail(seq, exc)
        if len(ok) < len(seqs):
            rows, seqs = rows[ok], [seqs[i] for i in ok]
        if not seqs:
            return [], [], []
        try:
            tokens, logprobs = sample(rows, [s.params for s in seqs], gens, [s.output_ids for s in seqs])
            return seqs, tokens, logprobs
        except Exception as exc:
            if len(seqs) == 1:
                self._fail(seqs[0], exc)
                return [], [], []
        kept, tokens, logprobs = [], [], []
        for i, seq in enumerate(seqs):
            try:
                t, lp = sample(rows[i : i + 1], [seq.params], [gens[i]], [seq.output_ids])
            except Exception as exc:
                self._fail(seq, exc)
                continue
            kept.append(seq)
            tokens += t
            logprobs += lp
        return kept, tokens, logprobs

    def _fail(self, seq: Sequence, exc: BaseException) -> None:
        log.warning("request %s failed alone: %s: %s", seq.request_id, type(exc).__name__, exc)
        seq.error = exc
        self._finish(seq, "error")
        self.failures.append(seq)

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.finish(seq, reason)
        self.sequences.pop(seq.request_id, None)


def _raise_failures(engine: LLMEngine) -> None:
    """Offline generation: a request that failed is an error for the caller."""
    if engine.failures:
        seq = engine.failures[0]
        engine.failures.clear()
        raise GptossError(f"request {seq.request_id} failed: {type(seq.error).__name__}: {seq.error}") from seq.error


def _auto_device(device: str | torch.device | None) -> str:
    """``device``, checked (``GptossError`` in one line when unknown or absent), or cuda when available."""
    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(device)


def check_device(device: str | torch.device) -> str:
    """A device this torch can use, or a ``GptossError`` naming what is wrong: an unknown device type,
    CUDA on a torch built without it, or a GPU index beyond those present."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise GptossError(f"device {str(device)!r}: unknown; expected cpu or cuda (cuda:N for one GPU)") from None
    if dev.type == "cpu":
        return str(dev)
    if dev.type != "cuda":
        raise GptossError(f"device {str(device)!r}: gptoss runs on cpu or cuda, not {dev.type}")
    if torch.version.cuda is None:
        raise GptossError(
            f"device {str(device)!r}: this torch ({torch.__version__}) is built without CUDA; "
            "use --device cpu, or install a CUDA build of torch"
        )
    if not torch.cuda.is_available():
        raise GptossError(
            f"device {str(device)!r}: torch {torch.__version__} has CUDA but finds no usable GPU; use --device cpu"
        )
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise GptossError(f"device {str(device)!r}: only {torch.cuda.device_count()} GPU(s) present")
    return str(dev)


def resolve_dtype(dtype: torch.dtype | str | None, device: str, weight_bytes: int) -> torch.dtype:
    """The dtype to load weights in: ``dtype`` when given (a name or a torch dtype; ``GptossError`` for an
    unknown name), else bf16 on a GPU or for big CPU models and float32 for small CPU ones."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # bf16 as trained where it pays (GPU, or big models on the CPU); float32 for small CPU models.
        return torch.bfloat16 if device.startswith("cuda") or weight_bytes > 2**31 else torch.float32
    table = {
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise GptossError(f"unknown dtype {dtype!r} (choose auto, bfloat16, float16 or float32)")
    return table[dtype]


class LLM:
    """Offline generation: load a model once, generate for many prompts (batched), or stream one."""

    def __init__(
        self,
        model: str | os.PathLike | Transformer,
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
        max_batch: int = 8,
        max_model_len: int | None = None,
        tokenizer: Tokenizer | None = None,
        layout: str = "auto",
        progress: bool = False,
        kv_cache: str = "auto",
        kv_cache_tokens: int | None = None,
        tensor_parallel_size: int = 1,
        topology=None,
        distributed_timeout: float | None = None,
        prefix_caching: bool = True,
        quantize: str | None = None,
        lora=None,
    ):
        """``tensor_parallel_size``: shard the model over that many local ranks (processes spawned here, this
        one being rank 0: attention by heads, experts across ranks, vocabulary split; gloo on the CPU, NCCL
        on GPUs). ``topology``: this process's place in a group started elsewhere (``torchrun``: see
        :func:`gptoss.engine.ranks.from_environment`); it must be rank 0, the others run
        :func:`follow_rank0`. ``distributed_timeout``: seconds any collective may wait. ``max_model_len``:
        default the model's own context (131,072 for gpt-oss). ``kv_cache_tokens``: positions the KV cache
        holds, shared by all sequences (default: from free memory). ``prefix_caching``: reuse the KV of
        earlier requests that share a prefix (see :class:`LLMEngine`).
        ``quantize``: ``mxfp4``
        packs a dense-expert checkpoint's experts on load. ``lora``: PEFT LoRA adapters to serve beside the
        base model, a path or ``NAME=PATH`` (or a list of them, or ``{name: path}``); a request picks one by
        name with ``SamplingParams(lora=name)``. A single adapter given alone is also the default of
        :meth:`generate` and :meth:`stream`."""
        from gptoss.model.lora import parse_specs

        lora_specs = parse_specs(lora)
        sharded = tensor_parallel_size > 1 or topology is not None
        if lora_specs and sharded:
            raise GptossError("LoRA adapters are not supported under tensor parallelism")
        engine = dict(
            max_batch=max_batch,
            max_model_len=max_model_len,
            kv_cache=kv_cache,
            kv_cache_tokens=kv_cache_tokens,
            prefix_caching=prefix_caching,
        )
        self.channel = None
        if isinstance(model, Transformer):
            if sharded:
                raise GptossError("tensor parallelism needs a checkpoint path, not a built Transformer")
            self.model, self.model_dir = model, None
        else:
            self.model_dir, config = _checkpoint(model, layout)
            dev = _auto_device(device)
            dt = resolve_dtype(dtype, dev, config.weight_bytes())
            if tensor_parallel_size < 1:
                raise GptossError(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}")
            if sharded:
                self.model, self.channel, engine["kv_cache_tokens"] = ranks.start_rank0(
                    self.model_dir, config, dev, dt, layout, engine, topology, tensor_parallel_size, distributed_timeout
                )
                atexit.register(self.close)
            else:
                self.model = Transformer.from_checkpoint(
                    self.model_dir, device=dev, dtype=dt, layout=layout, progress=progress, quantize=quantize
                )
        self.workers = self.channel.workers if self.channel is not None else []  # the local ranks spawned here
        self.default_lora = _add_adapters(self.model, lora, lora_specs)
        self.engine = LLMEngine(self.model, channel=self.channel, **engine)
        self.max_model_len = self.engine.max_model_len
        self._tokenizer = tokenizer

    def close(self) -> None:
        """Stop the other tensor parallel ranks (nothing to do for a single-process model)."""
        if self.channel is not None:
            channel, self.channel = self.channel, None
            channel.close()

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.load(self.model_dir)
        return self._tokenizer

    @property
    def is_synthetic(self) -> bool:
        """Loaded from a synthetic (random-weight) checkpoint; loading one issues a SyntheticCheckpointWarning."""
        from gptoss.model.synthetic import is_synthetic_checkpoint

        if getattr(self.model, "synthetic", False):
            return True
        return self.model_dir is not None and is_synthetic_checkpoint(self.model_dir)

    def _with_default_lora(self, params: SamplingParams) -> SamplingParams:
        if params.lora is None and getattr(self, "default_lora", None):
            import dataclasses

            return dataclasses.replace(params, lora=self.default_lora)
        return params

    def _ids(self, prompt: str | list[int]) -> list[int]:
        return self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)

    def generate(
        self,
        prompts: list[str | list[int]] | str | list[int],
        params: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Generate for each prompt (text or token ids); all run together in continuous batches."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        params = params or SamplingParams()
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise GptossError(f"{len(prompts)} prompts but {len(plist)} sampling parameter sets")
        seqs = [self.engine.add_request(self._ids(p), self._with_default_lora(sp)) for p, sp in zip(prompts, plist)]
        try:
            while any(not s.is_finished for s in seqs):
                self.engine.step()
                _raise_failures(self.engine)
        finally:
            for s in seqs:
                self.engine.abort(s.request_id)
        return [
            RequestOutput(
                s.request_id,
                s.prompt_ids,
                s.output_ids,
                self.tokenizer.decode(s.output_ids),
                s.finish_reason,
                s.logprobs,
                s.prompt_logprobs,
            )
            for s in seqs
        ]

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None) -> Iterator[TokenEvent]:
        """Generate for one prompt, yielding each token as it is sampled. Closing the iterator (or an
        exception in the consumer, such as KeyboardInterrupt) aborts the request and frees its slot."""
        seq = self.engine.add_request(self._ids(prompt), self._with_default_lora(params or SamplingParams()))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while not seq.is_finished:
                produced = self.engine.step()
                _raise_failures(self.engine)
                for s, token in produced:
                    if s is seq:
                        text = decoder.decode(self.tokenizer.token_bytes(token), final=seq.is_finished)
                        yield TokenEvent(token, text, seq.logprobs[-1], seq.finish_reason)
        finally:
            self.engine.abort(seq.request_id)


def follow_rank0(
    model: str | os.PathLike,
    topology,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    max_batch: int = 8,
    max_model_len: int | None = None,
    layout: str = "auto",
    kv_cache: str = "auto",
    kv_cache_tokens: int | None = None,
    prefix_caching: bool = True,
) -> None:
    """A rank other than 0 of a tensor parallel group started by ``torchrun``: load this rank's shard and run
    the steps rank 0 sends until it stops (:func:`gptoss.engine.ranks.follow`). Give it the same settings as
    rank 0's :class:`LLM`."""
    folder, config = _checkpoint(model, layout)
    dt = resolve_dtype(dtype, topology.device, config.weight_bytes())
    runner = ranks.group_runner_kwargs(
        config,
        max_batch,
        max_model_len,
        kv_cache,
        kv_cache_tokens or None,  # 0 too: max_batch full contexts
        prefix_caching,
    )
    ranks.follow(topology, folder, dt, layout, runner)


def _checkpoint(model: str | os.PathLike, layout: str):
    """The local folder of ``model`` (a folder or a hub id) and its config."""
    from gptoss.model.checkpoint import locate
    from gptoss.model.hub import resolve_model_path

    folder = resolve_model_path(str(model))
    return folder, locate(folder, layout).config


def _add_adapters(model: Transformer, lora, specs: list) -> str | None:
    """Load the LoRA adapters of ``specs`` beside ``model``; returns the default adapter of :meth:`LLM.generate`
    (a single adapter given alone), or None."""
    if not specs:
        return None
    from gptoss.model.lora import LoraSet

    added = LoraSet.of(model).add_all(specs)
    return added[0].name if len(added) == 1 and not isinstance(lora, (dict, list, tuple)) else None
