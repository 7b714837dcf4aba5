"""LoRA SFT of gpt-oss with TRL's ``SFTTrainer`` and PEFT, on conversations rendered by :mod:`.data`.

The model is transformers' ``GptOssForCausalLM`` (an MXFP4 base is dequantized for training, as the
cookbook does); the adapter targets the attention projections and, on request, the experts'
``gate_up_proj`` / ``down_proj`` parameters — what gptoss applies when serving. TRL builds the labels
from our ``assistant_masks`` column (loss on assistant tokens only) and runs the training loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from gptoss.errors import GptossError
from gptoss.finetune.data import build_examples

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
REPORT = "gptoss_finetune.json"


def _require():
    try:
        import peft  # noqa: F401
        import trl  # noqa: F401
    except ImportError as exc:
        raise GptossError(
            f"gptoss finetune needs TRL and PEFT ({exc.name} is missing): pip install 'gptoss[finetune]'"
        ) from None


def _hf_tokenizer():
    """o200k_harmony as a transformers tokenizer (TRL pads with it); the files are built once and cached."""
    from transformers import PreTrainedTokenizerFast

    from gptoss.hf_tokenizer import PAD, write_hf_tokenizer_files

    folder = Path(tempfile.mkdtemp(prefix="gptoss-tokenizer-"))
    write_hf_tokenizer_files(folder)
    tok = PreTrainedTokenizerFast.from_pretrained(folder)
    tok.pad_token = PAD
    return tok


def finetune(
    base: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    rank: int = 8,
    alpha: float = 16,
    experts: bool = False,
    learning_rate: float = 2e-4,
    epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 1,
    grad_accum: int = 1,
    max_length: int = 4096,
    device: str | None = None,
    seed: int = 0,
    log=None,
) -> dict:
    """Train a LoRA adapter on the conversations of ``data`` (JSONL) over the checkpoint ``base`` (HF
    layout) and write it to ``out`` in PEFT's format. Returns the report (also ``out/gptoss_finetune.json``):
    the loss of each logged step, the settings, and the examples' token counts."""
    _require()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import GptOssForCausalLM, Mxfp4Config
    from trl import SFTConfig, SFTTrainer

    from gptoss.model.checkpoint import locate
    from gptoss.model.hub import resolve_model_path
    from gptoss.tokenizer import Tokenizer

    if rank < 1:
        raise GptossError(f"--rank: expected a positive integer, found {rank}")
    folder = resolve_model_path(str(base))
    files = locate(folder, "hf")  # training runs on transformers' model: the HF layout
    examples = build_examples(data, Tokenizer.load(), max_length)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    kwargs = {"quantization_config": Mxfp4Config(dequantize=True)} if files.experts == "mxfp4" else {}
    model = GptOssForCausalLM.from_pretrained(files.folder, dtype=dtype, **kwargs).to(device)
    model.config.use_cache = False
    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(ATTENTION),
        target_parameters=list(EXPERTS) if experts else None,
        task_type="CAUSAL_LM",
    )
    dataset = Dataset.from_list([{"input_ids": e.input_ids, "assistant_masks": e.assistant_masks} for e in examples])
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="gptoss-finetune-") as work:
        args = SFTConfig(
            output_dir=work,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=grad_accum,
            learning_rate=learning_rate,
            num_train_epochs=epochs,
            max_steps=max_steps,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=device == "cpu",
            bf16=dtype == torch.bfloat16,
            seed=seed,
            max_length=None,
            dataloader_num_workers=0,
            disable_tqdm=log is None,
            lr_scheduler_type="constant",
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=_hf_tokenizer(), peft_config=lora
        )
        with contextlib.redirect_stdout(sys.stderr):  # the trainer's log lines: stdout stays for the report
            trainer.train()
        trainer.model.save_pretrained(out)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    report = {
        "base": str(base),
        "data": str(data),
        "adapter": str(out),
        "examples": len(examples),
        "tokens": sum(len(e.input_ids) for e in examples),
        "loss_tokens": sum(sum(e.assistant_masks) for e in examples),
        "rank": rank,
        "alpha": alpha,
        "targets": ATTENTION + (EXPERTS if experts else []),
        "learning_rate": learning_rate,
        "steps": trainer.state.global_step,
        "losses": losses,
    }
    (out / REPORT).write_text(json.dumps(report, indent=2))
    return report
