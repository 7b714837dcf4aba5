"""Greedy generation of LLM(..., tensor_parallel_size=N) equals the single-process engine's, on a device.

python benchmarks/tp_equal.py --device cuda 2 4 8      # (benchmarks/tp_check.sh runs this)
"""

import argparse
import sys
import tempfile

import torch

from gptoss.engine import LLM, SamplingParams
from gptoss.model import ModelConfig
from gptoss.model.synthetic import write_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("sizes", nargs="+", type=int)
    args = parser.parse_args()
    config = ModelConfig.preset("small").replace(num_attention_heads=16, num_key_value_heads=8)
    folder = write_checkpoint(tempfile.mkdtemp(), config, layout="original", dtype=torch.float32, tokenizer=False)
    prompts = [list(range(10, 10 + n)) for n in (300, 5, 40)]
    params = SamplingParams(max_tokens=16, temperature=0.0)

    def run(**kw):
        llm = LLM(
            folder, device=args.device, dtype=torch.float32, max_batch=4, max_model_len=512, tokenizer=object(), **kw
        )
        seqs = [llm.engine.add_request(p, params) for p in prompts]
        while llm.engine.has_work:
            llm.engine.step()
        llm.close()
        return [s.output_ids for s in seqs]

    want = run()
    status = 0
    for n in args.sizes:
        got = run(tensor_parallel_size=n)
        print(f"tensor parallel {n} on {args.device}: {'EQUAL' if got == want else 'DIFFERENT'}", flush=True)
        status |= got != want
    return status


if __name__ == "__main__":
    sys.exit(main())
