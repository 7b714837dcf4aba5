"""The sharded model (gptoss.model.parallel) against the single-process reference, on 2 CPU ranks (gloo)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gptoss import kernels
from gptoss.model import KVCache, ModelConfig, StepBatch, Transformer
from gptoss.model.parallel import Shard, ShardedTransformer, sharded_bytes
from gptoss.model.synthetic import write_checkpoint

WORLD = 2
# Tiny shapes; an odd vocabulary (uneven split) and the real 128-token window, crossed by the prompt.
CONFIG = ModelConfig.preset("tiny").replace(vocab_size=1001, sliding_window=128)
PROMPT = 150


def _check_rank(rank: int, world: int, init_file: str, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        with kernels.use("off"):  # the plain reference paths: within 1e-5
            _compare(rank, world, folder, ("hf", "original"), ((True, False), (False, True), (True, True)), 1e-5)
        with kernels.use("auto"):  # the CPU fast path where it loads (its own MoE rounds differently)
            _compare(rank, world, folder, ("original",), ((True, True),), 1e-4)
        # Neither rank tears the group down while the other may still be reading its last collective
        # (gloo aborts a process whose peer closed the connection under it).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _compare(rank: int, world: int, folder: str, layouts, splits, tol: float) -> None:
    tokens = torch.randint(0, CONFIG.vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(3))
    for layout in layouts:
        reference = Transformer.from_checkpoint(folder, layout=layout)
        expected = reference(tokens)
        for heads, experts in splits:
            shard = Shard(rank, world, heads=heads, experts=experts)
            model = ShardedTransformer.from_checkpoint(folder, shard, layout=layout)
            got = model(tokens)
            err = (got - expected).abs().max().item()
            assert err <= tol, f"{layout} heads={heads} experts={experts}: max |diff| {err}"
            # Only this rank's share of the sharded tensors is resident.
            mine, whole = sharded_bytes(model, CONFIG, shard), sharded_bytes(reference, CONFIG, shard)
            assert mine["replicated"] == whole["replicated"]
            assert abs(mine["sharded"] * world / whole["sharded"] - 1) < 0.01, (mine, whole)
        # The KV cache shards by KV heads; chunked prefill then decode over it matches too.
        cache = KVCache(model.config, 1, 256)
        assert cache.k[0].shape[2] == CONFIG.num_key_value_heads // world
        outs = []
        for start, n in ((0, 100), (100, 49), (149, 1)):
            outs.append(model.step(tokens[start : start + n], StepBatch.single(n, start), cache))
        err = (torch.cat(outs) - expected).abs().max().item()
        assert err <= tol, f"{layout} with a KV cache: max |diff| {err}"


def test_sharded_logits_match_single_process(tmp_path):
    folder = write_checkpoint(tmp_path / "ckpt", CONFIG, layout="both", dtype=torch.float32, tokenizer=False)
    mp.spawn(_check_rank, args=(WORLD, str(tmp_path / "init"), str(folder)), nprocs=WORLD)


def test_shard_rejects_what_does_not_divide():
    with pytest.raises(Exception, match="does not divide the 2 KV heads"):
        Shard(0, 4).check(CONFIG)
    with pytest.raises(Exception, match="does not divide the 8 experts"):
        Shard(0, 3, heads=False).check(CONFIG)


def test_rows_are_read_in_slices(tmp_path):
    """Both layouts give the same slices as narrowing the whole tensor (qkv across q/k/v in HF)."""
    from gptoss.model.checkpoint import CheckpointReader, locate

    folder = write_checkpoint(tmp_path / "ckpt", CONFIG, layout="both", dtype=torch.float32, tokenizer=False)
    for layout in ("hf", "original"):
        reader = CheckpointReader(locate(folder, layout))
        for name in (
            "block.0.attn.qkv.weight",
            "block.1.attn.out.weight",
            "block.0.mlp.mlp1_weight.blocks",
            "block.1.mlp.mlp2_weight.scales",
            "unembedding.weight",
        ):
            dim, ranges = Shard(1, WORLD).slices(CONFIG, name)
            whole = reader.get(name)
            expect = torch.cat([whole.narrow(dim, a, b - a) for a, b in ranges], dim=dim)
            assert torch.equal(reader.get_slices(name, ranges, dim=dim), expect), (layout, name)


def test_tensor_parallel_llm_generates_as_one_process(tmp_path, tokenizer, monkeypatch):
    """LLM(..., tensor_parallel_size=2): rank 0 schedules and samples, a spawned rank follows; greedy output
    equals the single-process engine's (block allocations, frees and prefix-cache adoptions mirrored, so
    the second round reuses the first's blocks on both ranks)."""
    from gptoss.engine import LLM, SamplingParams

    monkeypatch.setenv("GPTOSS_KERNELS", "off")  # both engines on the reference path (the spawned rank too)
    config = CONFIG
    folder = write_checkpoint(tmp_path / "ckpt", config, layout="original", dtype=torch.float32, tokenizer=False)
    params = SamplingParams(max_tokens=6, temperature=0.0)
    g = torch.Generator().manual_seed(5)
    prefix = torch.randint(0, 1000, (20,), generator=g).tolist()
    prompts = [prefix + torch.randint(0, 1000, (n,), generator=g).tolist() for n in (120, 3)]

    def run(llm):
        outs = [o.token_ids for o in llm.generate(prompts, params)]
        for p in prompts:  # each again: its prompt from the prefix cache
            outs += [o.token_ids for o in llm.generate([p], params)]
        return outs

    single = LLM(folder, device="cpu", dtype=torch.float32, max_batch=2, max_model_len=256, tokenizer=tokenizer)
    expected = run(single)
    sharded = LLM(
        folder,
        device="cpu",
        dtype=torch.float32,
        max_batch=2,
        max_model_len=256,
        tokenizer=tokenizer,
        kv_cache="paged",
        tensor_parallel_size=2,
        distributed_timeout=60,
    )
    try:
        assert sharded.model.config.num_key_value_heads == config.num_key_value_heads // 2
        assert run(sharded) == expected
        assert sharded.engine.prefix_hits == single.engine.prefix_hits == 2
    finally:
        sharded.close()
    assert [p.exitcode for p in sharded.workers] == [0]


def test_bench_tensor_parallel_prints_the_same_fields(capsys):
    import json

    from gptoss.cli.main import main

    argv = [
        "bench",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--tensor-parallel",
        "2",
        "--prompt-len",
        "8",
        "--decode-tokens",
        "2",
        "--batch-sizes",
        "1,2",
        "--repeats",
        "1",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tensor_parallel"] == 2
    assert [d["batch"] for d in result["decode"]] == [1, 2] and all(d["tok_s"] > 0 for d in result["decode"])
    assert result["prefill"]["tokens"] == 8 and result["prefill"]["tok_s"] > 0
    assert {"weights_bytes", "kv_cache_bytes", "floor", "table", "load_seconds"} <= set(result)
