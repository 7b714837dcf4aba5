#!/usr/bin/env bash
# Issue 15's multi-GPU checks (tensor + expert parallel on NCCL), on a machine with 2 or more NVIDIA GPUs,
# from anywhere in the repository. Not run yet: no multi-GPU machine was available when this was written.
#
#   benchmarks/tp_check.sh                  # every stage (~10 min on 8 H100s)
#   benchmarks/tp_check.sh equal bench20b   # some stages
#
# Stages
#   equal      greedy generation of LLM(..., tensor_parallel_size=N) on CUDA equals the single-GPU engine's
#              (random 'small' checkpoint, float32; N = 2 and every power of two up to the GPUs seen, max 8)
#   bench20b   gptoss bench --tensor-parallel N on random gpt-oss-20b weights (bf16): 2k prefill, decode 1/16/64
#   bench120b  gpt-oss-120b (which needs more than one 80 GB GPU with room for a cache) at N = 2, 4, 8
#
# Writes under $OUT (default out/tp): summary.txt, equal.log, bench-20b-tpN.json/.log, bench-120b-tpN.json/.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/tp}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
stages=${*:-equal bench20b bench120b}
gpus=$($PY -c "import torch; print(torch.cuda.device_count())")
sizes=""
for n in 2 4 8; do [ "$n" -le "$gpus" ] && sizes="$sizes $n"; done
status=0
{
  echo "== $(date -u +%FT%TZ) tp_check: $stages on $gpus GPUs (sizes:$sizes)"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1
} | tee "$OUT/summary.txt"
[ -z "$sizes" ] && { echo "tp_check: needs at least 2 GPUs" | tee -a "$OUT/summary.txt"; exit 1; }

for stage in $stages; do
  case $stage in
    equal)
      $PY benchmarks/tp_equal.py --device cuda $sizes > "$OUT/equal.log" 2>&1
      rc=$?; grep -h "tensor parallel" "$OUT/equal.log" | tee -a "$OUT/summary.txt"
      echo "equal: exit $rc" | tee -a "$OUT/summary.txt"; [ $rc -ne 0 ] && status=1 ;;
    bench20b|bench120b)
      preset=gpt-oss-20b; [ "$stage" = bench120b ] && preset=gpt-oss-120b
      batches=1,16,64; [ "$stage" = bench120b ] && batches=1,16
      for n in $sizes; do
        timeout 1800 $PY -m gptoss bench --preset $preset --device cuda --tensor-parallel "$n" --prompt-len 2048 \
          --batch-sizes $batches --decode-tokens 32 --repeats 2 --out "$OUT/bench-${preset#gpt-oss-}-tp$n.json" \
          > "$OUT/bench-${preset#gpt-oss-}-tp$n.log" 2>&1
        rc=$?; echo "$stage tp$n: exit $rc" | tee -a "$OUT/summary.txt"; [ $rc -ne 0 ] && status=1
      done ;;
    *) echo "unknown stage $stage" | tee -a "$OUT/summary.txt"; status=1 ;;
  esac
done
exit $status
