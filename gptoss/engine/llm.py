"""The engine loop (schedule -> run -> postprocess) and the Python API built on it.

    from gptoss.engine import LLM, SamplingParams
    llm = LLM("openai/gpt-oss-20b")            # or a local folder
    outs = llm.generate(["Hello"], SamplingParams(max_tokens=32))
"""

from __future__ import annotations

import codecs
import logging
import os
from dataclasses import dataclass, field
from typing import Iterator

import torch

from gptoss.engine.distributed import RankFailed
from gptoss.engine.model_runner import ModelRunner
from gptoss.engine.sampling import SamplingParams, TokenLogprobs, sample
from gptoss.engine.scheduler import Scheduler
from gptoss.engine.sequence import Sequence
from gptoss.errors import GptossError
from gptoss.model.paged_cache import NoFreeBlocks
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


@dataclass
class TokenEvent:
    """One generated token of a streamed request."""

    token: int
    text: str  # the text this token completes (UTF-8 split across tokens is held back until whole)
    logprobs: TokenLogprobs | None
    finish_reason: str | None  # set on the last token


class PrefixCache:
    """KV snapshots of shared prompt prefixes (the system and developer messages of a server) in
    dedicated cache slots, least recently used evicted first."""

    MIN_TOKENS = 16

    def __init__(self, slots: list[int]):
        self.free = list(slots)
        self.entries: dict[tuple[int, ...], int] = {}  # prefix -> slot, oldest first

    def lookup(self, prefix: tuple[int, ...]) -> int | None:
        slot = self.entries.pop(prefix, None)
        if slot is not None:
            self.entries[prefix] = slot  # most recently used
        return slot

    def reserve(self, prefix: tuple[int, ...]) -> int | None:
        if not self.free and not self.entries:
            return None
        if not self.free:
            oldest = next(iter(self.entries))
            self.free.append(self.entries.pop(oldest))
        slot = self.free.pop()
        self.entries[prefix] = slot
        return slot

    def drop(self, slot: int) -> None:
        """Forget the entry in ``slot`` (its snapshot could not be taken)."""
        self.entries = {p: s for p, s in self.entries.items() if s != slot}
        self.free.append(slot)


class LLMEngine:
    def __init__(self, model: Transformer, max_batch: int = 8, max_model_len: int = 4096, max_prefill_tokens: int = 2048,
                 prefix_slots: int = 4, kv_cache: str = "auto", kv_cache_tokens: int | None = None,
                 cuda_graphs: bool | None = None, channel=None):
        """``kv_cache``: ``slot`` (one fixed place per sequence, the CPU default), ``paged`` (blocks from a
        block manager, the CUDA default, where the Triton kernels and decode CUDA graphs run) or ``auto``.
        ``kv_cache_tokens`` sizes the paged cache (default: every sequence can reach ``max_model_len``).
        ``channel``: rank 0's :class:`~gptoss.engine.distributed.StepChannel` when ``model`` is one shard of
        a tensor parallel model (the other ranks build their runner from :meth:`runner_kwargs`)."""
        self.model = model
        self.max_model_len = max_model_len
        self.runner = ModelRunner(model, channel=channel, **self.runner_kwargs(
            max_batch, max_model_len, max_prefill_tokens, prefix_slots, kv_cache, kv_cache_tokens, cuda_graphs))
        self.scheduler = Scheduler(max_batch, max_prefill_tokens, blocks=self.runner.blocks)
        self.prefixes = PrefixCache(list(range(max_batch, max_batch + prefix_slots)))  # keyed by _prefix_key
        self.prefix_hits = 0
        self.sequences: dict[str, Sequence] = {}
        # Requests whose processing raised, each failed alone (finish_reason "error", ``seq.error``) while
        # the rest of the batch goes on; the async engine drains this list after each step.
        self.failures: list[Sequence] = []

    @staticmethod
    def runner_kwargs(max_batch: int = 8, max_model_len: int = 4096, max_prefill_tokens: int = 2048,
                      prefix_slots: int = 4, kv_cache: str = "auto", kv_cache_tokens: int | None = None,
                      cuda_graphs: bool | None = None) -> dict:
        """The :class:`ModelRunner` of an engine so configured (every tensor parallel rank builds the same)."""
        return dict(max_batch=max_batch + prefix_slots, max_model_len=max_model_len, kv_cache=kv_cache,
                    kv_cache_tokens=kv_cache_tokens, max_step_tokens=max_prefill_tokens, cuda_graphs=cuda_graphs,
                    decode_batch=max_batch)

    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None,
                    prefix_len: int = 0) -> Sequence:
        """Queue a request. ``prefix_len``: its first tokens are a prefix other requests share (a server's
        system and developer messages); their keys and values are computed once and copied after that."""
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
        if params.lora is not None:
            lora = getattr(self.model, "lora", None)
            if lora is None:
                raise GptossError(f"unknown LoRA adapter {params.lora!r} (none is loaded)")
            lora.slot(params.lora)  # an unknown name is refused here, before the request is queued
        seq = Sequence(prompt_ids, params, request_id)
        if PrefixCache.MIN_TOKENS <= prefix_len < len(prompt_ids):
            seq.prefix_len = prefix_len
        if seq.request_id in self.sequences:
            raise GptossError(f"request id {seq.request_id!r} is already in use")
        self.sequences[seq.request_id] = seq
        self.scheduler.add(seq)
        return seq

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
        if is_prefill:
            work = [(seq, self._reuse_prefix(seq, n)) for seq, n in work]
        work, logits = self._run_isolated(work)
        for seq, _ in work:
            if seq.prefix_len and seq.num_cached == seq.prefix_len and seq.prefix_snapshot:
                slot = self.prefixes.reserve(_prefix_key(seq))
                if slot is not None:
                    try:
                        self.runner.cache.copy_slot(seq.slot, slot, seq.prefix_len)
                    except NoFreeBlocks:  # the paged cache is full: skip this snapshot
                        self.prefixes.drop(slot)
                seq.prefix_snapshot = False
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
            elif len(seq.output_ids) >= p.max_tokens or len(seq) >= self.max_model_len:
                self._finish(seq, "length")
        return produced

    def _run_isolated(self, work: list[tuple[Sequence, int]]) -> tuple[list[tuple[Sequence, int]], torch.Tensor | None]:
        """The forward pass of ``work``. If the batch raises, each sequence runs alone and only those that
        raise again fail (the others' cache writes are simply redone: nothing advanced)."""
        try:
            return work, self.runner.run(work)
        except RankFailed:  # not this batch's fault: no rank can run anything any more
            raise
        except Exception as exc:
            if len(work) == 1:
                self._fail(work[0][0], exc)
                return [], None
        kept, rows = [], []
        for item in work:
            try:
                rows.append(self.runner.run([item]))
                kept.append(item)
            except RankFailed:
                raise
            except Exception as exc:
                self._fail(item[0], exc)
        return kept, (torch.cat(rows) if rows else None)

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

    def _reuse_prefix(self, seq: Sequence, n: int) -> int:
        """Before a sequence's first prefill chunk: copy a cached prefix into its slot, or arrange for
        the first chunk to end at the prefix so that it can be snapshotted. Returns the chunk length."""
        if not seq.prefix_len or seq.num_cached:
            return n
        slot = self.prefixes.lookup(_prefix_key(seq))
        if slot is not None:
            try:
                self.runner.cache.copy_slot(slot, seq.slot, seq.prefix_len)
            except NoFreeBlocks:  # the paged cache is full: compute the prefix instead
                return n
            seq.num_cached = seq.prefix_len
            self.prefix_hits += 1
            return min(n, len(seq) - seq.num_cached)
        seq.prefix_snapshot = True
        return min(n, seq.prefix_len)

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.finish(seq, reason)
        self.sequences.pop(seq.request_id, None)


def _prefix_key(seq: Sequence) -> tuple:
    """A shared prefix's cache key: its tokens and the LoRA adapter that computed its keys and values."""
    return (seq.lora, *seq.prompt_ids[: seq.prefix_len])


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
        raise GptossError(f"device {str(device)!r}: this torch ({torch.__version__}) is built without CUDA; "
                          "use --device cpu, or install a CUDA build of torch")
    if not torch.cuda.is_available():
        raise GptossError(f"device {str(device)!r}: torch {torch.__version__} has CUDA but finds no usable GPU; "
                          "use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise GptossError(f"device {str(device)!r}: only {torch.cuda.device_count()} GPU(s) present")
    return str(dev)


def _auto_dtype(dtype: torch.dtype | str | None, device: str, weight_bytes: int) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # bf16 as trained where it pays (GPU, or big models on the CPU); float32 for small CPU models.
        return torch.bfloat16 if device.startswith("cuda") or weight_bytes > 2**31 else torch.float32
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
             "float16": torch.float16, "fp16": torch.float16}
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
        max_model_len: int = 4096,
        tokenizer: Tokenizer | None = None,
        layout: str = "auto",
        progress: bool = False,
        kv_cache: str = "auto",
        kv_cache_tokens: int | None = None,
        tensor_parallel_size: int = 1,
        topology=None,
        distributed_timeout: float | None = None,
        quantize: str | None = None,
        lora=None,
    ):
        """``tensor_parallel_size``: shard the model over that many local ranks (processes spawned here, this
        one being rank 0: attention by heads, experts across ranks, vocabulary split; gloo on the CPU, NCCL
        on GPUs). ``topology``: this process's place in a group started elsewhere (``torchrun``: see
        :func:`gptoss.engine.distributed.from_environment`); it must be rank 0, the others run
        :func:`follow_rank0`. ``distributed_timeout``: seconds any collective may wait. ``quantize``: ``mxfp4``
        packs a dense-expert checkpoint's experts on load. ``lora``: PEFT LoRA adapters to serve beside the
        base model, a path or ``NAME=PATH`` (or a list of them, or ``{name: path}``); a request picks one by
        name with ``SamplingParams(lora=name)``. A single adapter given alone is also the default of
        :meth:`generate` and :meth:`stream`."""
        from gptoss.engine import distributed

        from gptoss.model.lora import parse_specs

        lora_specs = parse_specs(lora)
        if lora_specs and (tensor_parallel_size > 1 or topology is not None):
            raise GptossError("LoRA adapters are not supported under tensor parallelism")
        self.channel = None
        self.workers: list = []  # the local ranks this process spawned (tensor parallel)
        channel_kwargs = {}
        if isinstance(model, Transformer):
            if tensor_parallel_size > 1 or topology is not None:
                raise GptossError("tensor parallelism needs a checkpoint path, not a built Transformer")
            self.model = model
            self.model_dir = None
        else:
            from gptoss.model.checkpoint import locate
            from gptoss.model.hub import resolve_model_path

            self.model_dir = resolve_model_path(str(model))
            config = locate(self.model_dir, layout).config
            dev = _auto_device(device)
            dt = _auto_dtype(dtype, dev, config.weight_bytes())
            if tensor_parallel_size < 1:
                raise GptossError(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}")
            if tensor_parallel_size > 1 or topology is not None:
                from gptoss.model.parallel import Shard

                world = topology.world if topology is not None else tensor_parallel_size
                Shard(0, world).check(config)  # before any process starts
                timeout = distributed_timeout or distributed.DEFAULT_TIMEOUT_S
                runner_kwargs = LLMEngine.runner_kwargs(max_batch, min(max_model_len, config.max_position_embeddings),
                                                        kv_cache=kv_cache, kv_cache_tokens=kv_cache_tokens)
                procs = []
                if topology is None:
                    threads = None if dev.startswith("cuda") else max(1, torch.get_num_threads() // world)
                    topology, procs = distributed.spawn_workers(world, dev, str(self.model_dir), dt, layout,
                                                                runner_kwargs, timeout, threads)
                    if threads:
                        torch.set_num_threads(threads)
                if topology.rank != 0:
                    raise GptossError(f"LLM runs on rank 0; rank {topology.rank} runs follow_rank0()")
                try:
                    distributed.init(topology)
                    self.channel = distributed.StepChannel(topology)
                    self.channel.workers = self.workers = procs
                    self.model = distributed.load_shard(self.model_dir, topology, dt, layout)
                    self.channel.ready()
                except BaseException:
                    for proc in procs:
                        proc.kill()
                    raise
                import atexit

                atexit.register(self.close)
                channel_kwargs = {"channel": self.channel}
            else:
                self.model = Transformer.from_checkpoint(self.model_dir, device=dev, dtype=dt, layout=layout,
                                                         progress=progress, quantize=quantize)
        self.default_lora = None
        if lora_specs:
            from gptoss.model.lora import LoraSet

            added = LoraSet.of(self.model).add_all(lora_specs)
            if len(added) == 1 and not isinstance(lora, (dict, list, tuple)):
                self.default_lora = added[0].name
        self.max_model_len = min(max_model_len, self.model.config.max_position_embeddings)
        self.engine = LLMEngine(self.model, max_batch=max_batch, max_model_len=self.max_model_len, kv_cache=kv_cache,
                                kv_cache_tokens=kv_cache_tokens, **channel_kwargs)
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
            RequestOutput(s.request_id, s.prompt_ids, s.output_ids, self.tokenizer.decode(s.output_ids), s.finish_reason, s.logprobs)
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


def follow_rank0(model: str | os.PathLike, topology, device: str | None = None, dtype: torch.dtype | str | None = None,
                 max_batch: int = 8, max_model_len: int = 4096, layout: str = "auto", kv_cache: str = "auto",
                 kv_cache_tokens: int | None = None) -> None:
    """A rank other than 0 of a tensor parallel group started by ``torchrun``: load this rank's shard and run
    the steps rank 0 sends until it stops. Give it the same settings as rank 0's :class:`LLM`."""
    from gptoss.engine import distributed
    from gptoss.model.checkpoint import locate
    from gptoss.model.hub import resolve_model_path

    folder = resolve_model_path(str(model))
    config = locate(folder, layout).config
    dt = _auto_dtype(dtype, topology.device, config.weight_bytes())
    distributed.init(topology)
    channel = distributed.StepChannel(topology)
    shard_model = distributed.load_shard(folder, topology, dt, layout)
    runner = ModelRunner(shard_model, **LLMEngine.runner_kwargs(
        max_batch, min(max_model_len, config.max_position_embeddings), kv_cache=kv_cache,
        kv_cache_tokens=kv_cache_tokens))
    channel.ready()
    distributed.worker_loop(runner, channel)
    channel.close()
