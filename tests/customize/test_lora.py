"""PEFT LoRA adapters applied by gptoss equal PEFT on transformers with the same adapter (float32 logits
1e-4, greedy identical), over a dense and an MXFP4 base, attention-only and with the experts' parameters;
requests for different adapters batched together equal each alone; bad adapters are refused whole."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptoss.cli.main import main
from gptoss.engine import LLM, SamplingParams
from gptoss.errors import GptossError
from gptoss.model import Transformer
from gptoss.model.lora import LoraSet
from gptoss.model.peft_adapter import AdapterError
from tests.customize.conftest import hf_model, rel_err

TOKENS = torch.randint(0, 199998, (36,), generator=torch.Generator().manual_seed(9))
GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_stop=True)


def peft_reference(base, adapter, tokens, new_tokens=4):
    """PEFT on transformers: float32 logits of ``tokens``, and greedy tokens after their first 10 (None
    when ``new_tokens`` is 0)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(hf_model(base), adapter).eval()
    with torch.no_grad():
        logits = model(tokens[None]).logits[0]
        ids = (
            model.generate(
                input_ids=tokens[None, :10],
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )[0, 10:].tolist()
            if new_tokens
            else None
        )
    return logits, ids


@pytest.mark.parametrize("which", ["attn", "experts", "gate_up", "rs"])
@pytest.mark.parametrize("base", ["dense", "mxfp4"])
def test_adapter_matches_peft_on_transformers(base, which, adapters, dense_checkpoint, mxfp4_checkpoint):
    folder = dense_checkpoint if base == "dense" else mxfp4_checkpoint
    greedy = which in ("attn", "experts")  # the cookbook's targets: greedy tokens too; the others by logits
    want, want_ids = peft_reference(folder, adapters[which], TOKENS, 4 if greedy else 0)
    model = Transformer.from_checkpoint(folder, dtype=torch.float32)
    lora = LoraSet.of(model)
    lora.add(adapters[which], "x")
    with lora.active([(1, TOKENS.numel())]):
        got = model(TOKENS)
    assert rel_err(got, want) < 1e-4
    assert rel_err(model(TOKENS), want) > 1e-3  # the adapter changed the model; without it the base runs
    if not greedy:
        return
    llm = LLM(model, max_batch=2)
    assert (
        llm.generate([TOKENS[:10].tolist()], SamplingParams(**{**GREEDY.__dict__, "lora": "x"}))[0].token_ids
        == want_ids
    )


def test_adapters_batched_together_equal_each_alone(adapters, mxfp4_checkpoint):
    model = Transformer.from_checkpoint(mxfp4_checkpoint, dtype=torch.float32)
    llm = LLM(model, max_batch=4, lora={"a": adapters["attn"], "e": adapters["experts"]})
    prompts = [TOKENS[:12].tolist(), TOKENS[5:20].tolist(), TOKENS[2:9].tolist(), TOKENS[:12].tolist()]
    names = ["a", None, "e", "e"]
    params = [SamplingParams(**{**GREEDY.__dict__, "lora": n}) for n in names]
    together = [o.token_ids for o in llm.generate(prompts, params)]
    alone = [llm.generate([p], sp)[0].token_ids for p, sp in zip(prompts, params)]
    assert together == alone
    # and the logits of one mixed step equal those of each adapter's tokens run alone
    lora = model.lora
    mixed = TOKENS[:24]
    from gptoss.model.cache import KVCache, StepBatch

    batch = StepBatch.of([0, 1, 2], [0, 0, 0], [8, 8, 8])
    with lora.active([(1, 8), (0, 8), (2, 8)]):
        got = model.step(mixed, batch, KVCache(model.config, num_slots=3, max_len=9, dtype=model.dtype))
    for i, slot in enumerate([1, 0, 2]):
        part = mixed[8 * i : 8 * i + 8]
        with lora.active([(slot, 8)]):
            alone_logits = model(part)
        assert rel_err(got[8 * i : 8 * i + 8], alone_logits) < 1e-5
        if slot:  # and each adapter's rows are its own, not the base's
            assert rel_err(got[8 * i : 8 * i + 8], model(part)) > 1e-3


def test_unknown_adapter_name_is_refused(adapters, mxfp4_checkpoint):
    llm = LLM(Transformer.from_checkpoint(mxfp4_checkpoint), max_batch=1, lora={"a": adapters["attn"]})
    with pytest.raises(GptossError, match=r"unknown LoRA adapter 'b' \(loaded: a\)"):
        llm.generate([[1, 2, 3]], SamplingParams(max_tokens=1, lora="b"))


def _edited(tmp_path, adapter, edit_tensors=None, edit_config=None):
    out = tmp_path / "bad"
    shutil.copytree(adapter, out)
    if edit_tensors:
        tensors = load_file(out / "adapter_model.safetensors")
        edit_tensors(tensors)
        save_file(tensors, out / "adapter_model.safetensors")
    if edit_config:
        config = json.loads((out / "adapter_config.json").read_text())
        edit_config(config)
        (out / "adapter_config.json").write_text(json.dumps(config))
    return out


KEY = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"


@pytest.mark.parametrize(
    "case, edit_tensors, edit_config, message",
    [
        (
            "shape",
            lambda t: t.__setitem__(KEY, t[KEY][:16]),
            None,
            r"model\.layers\.1\.self_attn\.v_proj: expected lora_A \[4, 64\] and lora_B \[32, 4\]"
            r".*found \[4, 64\] and \[16, 4\]",
        ),
        (
            "rank",
            None,
            lambda c: c.__setitem__("r", 8),
            r"mlp\.experts\.down_proj: lora_A\.weight \[32, 64\] has 32 rows; "
            r"the adapter's rank 8 x 8 experts = 64 does not fit",
        ),
        (
            "attention rank",
            None,
            lambda c: c.__setitem__("rank_pattern", {"v_proj": 3}),
            r"v_proj: lora_A\.weight \[4, 64\] has 4 rows; the adapter's rank 3 does not fit",
        ),
        (
            "target",
            lambda t: t.__setitem__("base_model.model.model.layers.0.mlp.router.lora_A.weight", torch.zeros(4, 64)),
            None,
            r"tensor base_model\.model\.model\.layers\.0\.mlp\.router\.lora_A\.weight: gptoss applies LoRA to",
        ),
        (
            "layer",
            lambda t: t.__setitem__(KEY.replace("layers.1", "layers.5"), t[KEY].clone()),
            None,
            r"layer 5, but the base model has 2 layers",
        ),
        ("half", lambda t: t.pop(KEY.replace("lora_B", "lora_A")), None, r"v_proj: lora_A\.weight is missing"),
        ("dora", None, lambda c: c.__setitem__("use_dora", True), r"use_dora: DoRA is not supported"),
    ],
)
def test_bad_adapter_is_refused_in_one_line_and_nothing_is_loaded(
    tmp_path, adapters, mxfp4_checkpoint, case, edit_tensors, edit_config, message
):
    bad = _edited(tmp_path, adapters["experts"], edit_tensors, edit_config)
    model = Transformer.from_checkpoint(mxfp4_checkpoint)
    with pytest.raises(AdapterError, match=message) as info:
        LLM(model, max_batch=1, lora={"good": adapters["attn"], "bad": bad})
    assert "\n" not in str(info.value)
    assert getattr(model, "lora", None) is None or model.lora.names == []


def test_not_an_adapter_folder_is_named(tmp_path, mxfp4_checkpoint):
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        LoraSet.of(Transformer.from_checkpoint(mxfp4_checkpoint)).add(tmp_path)


@pytest.mark.parametrize("base", ["dense", "mxfp4"])
def test_merge_writes_the_adapted_model_as_a_checkpoint(tmp_path, base, adapters, dense_checkpoint, mxfp4_checkpoint):
    folder = dense_checkpoint if base == "dense" else mxfp4_checkpoint
    assert main(["merge", str(folder), str(adapters["experts"]), str(tmp_path / "merged")]) == 0
    model = Transformer.from_checkpoint(folder, dtype=torch.float32)
    LoraSet.of(model).add(adapters["experts"], "e")
    with model.lora.active([(1, TOKENS.numel())]):
        want = model(TOKENS)
    merged = Transformer.from_checkpoint(tmp_path / "merged", dtype=torch.float32)
    assert merged.experts == "dense"
    # float32 weights merge exactly; the synthetic MXFP4 base stores bf16, so its merged experts are bf16
    assert rel_err(merged(TOKENS), want) < (1e-5 if base == "dense" else 2e-3)
