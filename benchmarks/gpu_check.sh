#!/usr/bin/env bash
# Issue 6's GPU checks in one command, on a machine with an NVIDIA GPU, from anywhere in the repository:
#
#   benchmarks/gpu_check.sh                     # every stage: tests bench20b bench120b sweep (~10-15 min)
#   benchmarks/gpu_check.sh tests bench20b      # some stages (e.g. split over two calls of <10 min each)
#
# Stages
#   tests      kernel tests on CUDA at real gpt-oss sizes (bf16): MoE, attention, RMSNorm/RoPE, the paged
#              cache, the whole model through the fast path vs the reference, CUDA-graph decode vs eager
#   bench20b   gptoss bench, random gpt-oss-20b weights built on the GPU, 2k prefill, decode at batch 1/16/64,
#              checked against the reference path, and Hugging Face transformers timed on the same weights
#   bench120b  gpt-oss-120b: loads on one GPU with a 32k-token KV cache reserved; 2k prefill, decode batch 1
#   sweep      MoE kernel tile configurations at decode and prefill sizes (to tune kernels/moe.py _config)
#
# Writes at most 8 files under $OUT (default out/gpu): summary.txt, tests.log, bench-20b.json, bench-20b.log,
# bench-120b.json, bench-120b.log, moe-sweep.json, moe-sweep.log. Needs torch with CUDA, triton and pytest
# (transformers for the comparison); gptoss runs from this tree (PYTHONPATH), nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
stages=${*:-tests bench20b bench120b sweep}
status=0

{
  echo "== $(date -u +%FT%TZ) gpu_check: $stages"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" 2>&1
  $PY -c "import transformers; print('transformers', transformers.__version__)" 2>&1
  git rev-parse --short HEAD 2>/dev/null
} | tee -a "$OUT/summary.txt"

stage() {  # stage NAME SECONDS LOG COMMAND...
  local name=$1 limit=$2 log=$3
  shift 3
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
  tail -n 25 "$log"
  [ "$rc" = 0 ] || status=1
}

for s in $stages; do
  case $s in
    tests)
      stage tests 420 "$OUT/tests.log" $PY -m pytest -q -ra tests/kernels ;;
    bench20b)
      stage bench20b 480 "$OUT/bench-20b.log" $PY -m gptoss bench --preset gpt-oss-20b --device cuda \
        --prompt-len 2048 --decode-tokens 32 --batch-sizes 1,16,64 --repeats 3 --compare-transformers \
        --out "$OUT/bench-20b.json" ;;
    bench120b)
      stage bench120b 420 "$OUT/bench-120b.log" $PY -m gptoss bench --preset gpt-oss-120b --device cuda \
        --prompt-len 2048 --decode-tokens 32 --batch-sizes 1 --kv-tokens 32768 --repeats 3 \
        --out "$OUT/bench-120b.json" ;;
    sweep)
      stage sweep 300 "$OUT/moe-sweep.log" $PY benchmarks/moe_sweep.py --out "$OUT/moe-sweep.json" ;;
    *)
      echo "unknown stage $s (choose: tests bench20b bench120b sweep)" >&2; exit 2 ;;
  esac
done

for f in "$OUT"/bench-*.json; do
  [ -f "$f" ] && $PY - "$f" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
m = r.get('memory') or {}
print(f"-- {sys.argv[1]}: {r['model']} on {r['gpu']}, weights {m.get('weights_gb')} GB, "
      f"peak {m.get('peak_allocated_gb')} GB, check {r.get('check')}")
for row in r["table"]:
    print("   ", row)
PY
done
exit $status
