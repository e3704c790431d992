#!/usr/bin/env bash
# GPU check: run on a CUDA machine from the repository root. It
#   1. runs the integration tests on CUDA (ATTRLENS_TEST_DEVICE=cuda: tests/conftest.py's
#      default_model fixture loads the embedded model there; among them a real CUDA
#      out-of-memory: huge batches under a 3 GiB memory cap are halved until they fit,
#      tests/test_out_of_memory.py),
#   2. runs the scoring benchmark on CUDA (engine vs raw forward vs naive LOO, fp32 and bf16),
#   3. runs SPEX on a ~1,000-word prompt with the embedded model (queries, wall time),
# and writes everything to benchmarks/gpu_check_results.md (+ JSON next to it).
#
#   bash benchmarks/gpu_check.sh              # the real check (needs CUDA)
#   DRY_RUN=1 bash benchmarks/gpu_check.sh    # CPU, tiny sizes: proves the script end to end
#
# On the lent device machine (nothing can be installed there from the network, at most
# 64 MiB per call): benchmarks/gpu_kit.sh sends the model and wheels and runs this script.
#
# Environment: PY (default .venv/bin/python), OUT_MD (default
# benchmarks/gpu_check_results.md; the dry run defaults to /tmp/gpu_check_dryrun.md),
# TEST_TIMEOUT, BENCH_TIMEOUT, SPEX_TIMEOUT (s per step; 1800, 3600, 3600), SPEX_WORDS (default 1000), SPEX_B (default: method default),
# SPEX_NEW_TOKENS (default 16), STEPS (default "1 2 3": which parts to run).
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DRY_RUN=${DRY_RUN:-0}
if [[ "$DRY_RUN" == 1 ]]; then
  DEVICE=cpu
  OUT_MD=${OUT_MD:-/tmp/gpu_check_dryrun.md}
  TESTS=(tests/scoring/test_engine_limits.py -m "not integration" -k "per_row and delete")
  BENCH=(--device cpu --prompts short --dtypes float32 --repeats 1 --row-stride 3 --skip-captum)
  SPEX_WORDS=${SPEX_WORDS:-6}
  SPEX_B=${SPEX_B:-3}
  SPEX_NEW_TOKENS=${SPEX_NEW_TOKENS:-4}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  DEVICE=cuda
  OUT_MD=${OUT_MD:-benchmarks/gpu_check_results.md}
  TESTS=(tests -m integration)
  BENCH=(--device cuda --prompts short,medium,long --dtypes float32,bfloat16 --repeats 3
         --max-batch-tokens 32768 --skip-captum)
  SPEX_WORDS=${SPEX_WORDS:-1000}
  SPEX_B=${SPEX_B:-}
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: this torch sees no CUDA GPU; run with DRY_RUN=1 for the CPU dry run" >&2
    exit 2
  fi
fi
OUT_DIR=$(dirname "$OUT_MD")
BASE=$(basename "$OUT_MD" .md)
BENCH_JSON="$OUT_DIR/${BASE}_scoring.json"
SPEX_JSON="$OUT_DIR/${BASE}_spex.json"
STEPS=${STEPS:-1 2 3}
SPEX_NEW_TOKENS=${SPEX_NEW_TOKENS:-16}
step() { [[ " $STEPS " == *" $1 "* ]]; }
TEST_LOG="$OUT_DIR/${BASE}_tests.log"
status=0

{
  echo "# GPU check ($( [[ "$DRY_RUN" == 1 ]] && echo "CPU dry run, tiny sizes" || echo CUDA ))"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  "$PY" - <<'EOF'
import torch, transformers
print(f"- torch {torch.__version__}, transformers {transformers.__version__}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"- GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16: {torch.cuda.is_bf16_supported()}")
else:
    print(f"- no GPU; CPU threads: {torch.get_num_threads()}")
EOF
  echo
} > "$OUT_MD"

# ---- 1. integration tests on the device -------------------------------------------------
if step 1; then
echo "== 1. integration tests on $DEVICE"
t0=$(date +%s)
ATTRLENS_TEST_DEVICE=$DEVICE timeout "${TEST_TIMEOUT:-1800}" "$PY" -m pytest -q -p no:cacheprovider \
  "${TESTS[@]}" > "$TEST_LOG" 2>&1
rc=$?
[[ $rc -ne 0 ]] && status=1
{
  echo "## 1. Integration tests (ATTRLENS_TEST_DEVICE=$DEVICE)"
  echo
  echo "\`pytest ${TESTS[*]}\`: exit $rc, $(( $(date +%s) - t0 )) s"
  echo
  echo '```'
  tail -n 15 "$TEST_LOG"
  echo '```'
  echo
} >> "$OUT_MD"

fi

# ---- 2. scoring benchmark ----------------------------------------------------------------
if step 2; then
echo "== 2. scoring benchmark on $DEVICE"
timeout "${BENCH_TIMEOUT:-3600}" "$PY" benchmarks/scoring.py "${BENCH[@]}" --out "$BENCH_JSON" \
  > "$OUT_DIR/${BASE}_scoring.log" 2>&1
rc=$?
[[ $rc -ne 0 ]] && status=1
{
  echo "## 2. Scoring engine: LOO, ours vs naive batched from scratch vs raw forward"
  echo
  echo "\`benchmarks/scoring.py ${BENCH[*]}\`: exit $rc (JSON: \`$BENCH_JSON\`)"
  echo
} >> "$OUT_MD"
if [[ $rc -eq 0 ]]; then
  "$PY" - "$BENCH_JSON" >> "$OUT_MD" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print("| prompt | tokens (prompt/output) | rows | dtype | ours s | naive s | raw s | tokens naive/ours "
      "| engine tok/s ÷ raw | speed-up vs naive | peak MB ours/naive | max abs diff |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in d["results"]:
    for dt in ("float32", "bfloat16"):
        if dt not in r:
            continue
        x = r[dt]
        print(f"| {r['prompt']} | {r['prompt_tokens']}/{r['output_tokens']} | {r['rows_scored']} | {dt} "
              f"| {x['ours_wall_s']:.3f} | {x['naive_wall_s']:.3f} | {x['raw_wall_s']:.3f} "
              f"| {x['token_ratio_naive_over_ours']:.2f} | {x['engine_over_raw_throughput']:.2f} "
              f"| {x['speedup_vs_naive']:.2f} | {x['peak_mb']['ours']:.0f}/{x['peak_mb']['naive']:.0f} "
              f"| {x['max_abs_diff_ours_vs_naive']:.1e} |")
print()
gpu = [(r["prompt"], dt, r[dt]["gpu_peak_mb"]) for r in d["results"] for dt in ("float32", "bfloat16")
       if dt in r and r[dt].get("gpu_peak_mb", {}).get("ours") is not None]
print("peak MB: host resident memory above the loaded model.")
for p, dt, g in gpu:
    print(f"- GPU memory above the model, {p} {dt}: ours {g['ours']:.0f} MB, naive {g['naive']:.0f} MB")
print()
EOF
else
  tail -n 20 "$OUT_DIR/${BASE}_scoring.log" | sed 's/^/    /' >> "$OUT_MD"
fi

fi

# ---- 3. SPEX on a ~1,000-word prompt -----------------------------------------------------
if step 3; then
echo "== 3. SPEX on a ${SPEX_WORDS}-word prompt on $DEVICE"
timeout "${SPEX_TIMEOUT:-3600}" "$PY" - "$DEVICE" "$SPEX_WORDS" "${SPEX_B}" "$SPEX_JSON" \
  "$SPEX_NEW_TOKENS" >> "$OUT_MD" 2> "$OUT_DIR/${BASE}_spex.log" <<'EOF'
import json, sys, time
import attrlens
sys.path.insert(0, "benchmarks")
from scoring import PROMPTS

device, n_words, b, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
new_tokens = int(sys.argv[5])
passage = PROMPTS["long"].split(" ", 6)[-1]  # drop the instruction
words = []
k = 0
while len(words) < n_words:
    k += 1
    words += f"Part {k}.".split() + passage.split()
text = "Summarise the following text in one sentence. " + " ".join(words[:n_words])
t0 = time.perf_counter()
model = attrlens.load_model(device=device)
load_s = time.perf_counter() - t0
params = {"b": int(b)} if b else {}
t0 = time.perf_counter()
res = attrlens.explain(text, model=model, method="spex", granularity="word",
                       max_new_tokens=new_tokens, **params)
wall = time.perf_counter() - t0
cost = res.cost
top = sorted(zip(res.scores, res.labels), reverse=True)[:5]
row = {"device": device, "words": n_words, "features": len(res.labels),
       "dtype": str(model.model.dtype), "load_s": load_s, "wall_s": wall,
       "queries": cost.get("value_calls"), "model_forwards": cost.get("model_forwards"),
       "tokens_processed": cost.get("tokens_processed"), "params": res.params,
       "top5": [lab for _s, lab in top]}
json.dump(row, open(out, "w"), indent=2, default=str)
print("## 3. SPEX on a ~%d-word prompt (embedded model, %s, %s)" % (n_words, device, row["dtype"]))
print()
print(f"- features: {row['features']}, queries (value calls): {row['queries']}, "
      f"model forwards: {row['model_forwards']}, tokens processed: {row['tokens_processed']}")
print(f"- wall: {wall:.1f} s (model load {load_s:.1f} s excluded); top-5: {', '.join(row['top5'])}")
print()
EOF
rc=$?
if [[ $rc -ne 0 ]]; then
  status=1
  { echo "## 3. SPEX: failed (exit $rc)"; echo; tail -n 20 "$OUT_DIR/${BASE}_spex.log" | sed 's/^/    /'; } >> "$OUT_MD"
fi
fi

echo "gpu_check: wrote $OUT_MD (exit $status)"
exit $status
