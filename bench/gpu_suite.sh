#!/usr/bin/env bash
# The device suite: everything a lent GPU should measure, in one call of at most ~9 minutes.
#
#   bench/gpu_suite.sh [OUT_DIR]            # OUT_DIR defaults to $OUT (the device tool's folder)
#   bench/gpu_suite.sh --smoke OUT_DIR      # CPU: the same entry points on tiny shapes
#   bench/gpu_suite.sh --dry-run [--smoke] OUT_DIR   # print the steps, run nothing
#
# Steps, each under its own time budget (seconds, overridable: BUDGET_PYTEST_GPU, BUDGET_ENGINE,
# BUDGET_KERNELS, BUDGET_GRID), in this order:
#   1. pytest -m gpu tests/kernels: the warm-up test alone (it times first vs tenth runs),
#      then the rest on 4 xdist workers (compiles run in parallel) -> pytest-gpu.txt
#   2. bench/engine_gpu.py (the workload of the H200 baseline, cold compile caches so its full
#      warm-up costs what a fresh worker's does; HF at 32 output tokens)
#                                          -> engine.md, engine.json
#   3. bench/kernels.py --quick            -> kernels.md, kernels.json
#   4. the kernel test grid on the GPU (pytest -m "not gpu" tests/kernels, xdist if present)
#                                          -> pytest-grid.txt
# plus suite.md (device, date, versions, each step's exit code and time) and log.txt (the
# benches' output): 8 files, what the device tool returns at most.  Nothing is installed: the
# checkout runs from PYTHONPATH (bench/src_tree.py) with the machine's python3 (torch, triton,
# transformers, peft; no nats-py, redis, fastapi or openai there).
# Budgets total 530 s (580 s with every step's 10-s kill grace): on the device tool,
#   run(command="bash bench/gpu_suite.sh $OUT", timeout_s=600)
# then, here: .venv/bin/python bench/merge_gpu_suite.py <the reply's files_at>
set -u -o pipefail

MODE=gpu DRY=0
while :; do
  case "${1:-}" in
    --smoke) MODE=smoke; shift ;;
    --dry-run) DRY=1; shift ;;
    *) break ;;
  esac
done
OUT_DIR=${1:-${OUT:-}}
if [ -z "$OUT_DIR" ]; then
  echo "usage: bench/gpu_suite.sh [--dry-run] [--smoke] OUT_DIR (or set OUT)" >&2
  exit 2
fi
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ "$MODE" != gpu ] && PY=${PYTHON:-.venv/bin/python}
# The device's python has no install of the project: lay the package out as pyproject maps it
# (loraplex.tooling is tooling/, ...); PYTHONPATH=shared alone cannot import tests/conftest.py.
SRC=$("$PY" bench/src_tree.py "${TMPDIR:-/tmp}/loraplex-suite-src-$$") || exit 1
export PYTHONPATH="$SRC:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ "$MODE" = gpu ]; then
  ENGINE_ARGS=(--device cuda --dtype bfloat16 --layers 8 --repeats 1 --hf-output-len 32)
  KERNEL_ARGS=(--quick --only attn,lora,decode)  # attention first: the smallest part
  GRID=(tests/kernels)
  B_WARMUP=${BUDGET_PYTEST_WARMUP:-90} B_PYTEST=${BUDGET_PYTEST_GPU:-90}
  B_ENGINE=${BUDGET_ENGINE:-230} B_KERNELS=${BUDGET_KERNELS:-90} B_GRID=${BUDGET_GRID:-30}
else
  ENGINE_ARGS=(--device cpu --dtype float32 --shape tiny --layers 2 --requests 8 --prompt-len 16
               --output-len 4 --adapters 4 --warmup light)
  KERNEL_ARGS=(--smoke)
  GRID=(tests/kernels/test_prefill_attention_flex.py)
  B_WARMUP=120 B_PYTEST=120 B_ENGINE=120 B_KERNELS=120 B_GRID=120
fi
COLD=${TMPDIR:-/tmp}/loraplex-suite-cold-$$
XDIST=() XDIST_GPU=()
if [ "$MODE" = gpu ] && "$PY" -c "import xdist" 2>/dev/null; then
  XDIST=(-n 8) XDIST_GPU=(-n 4 --dist loadfile)
fi
WARMUP_TEST=tests/kernels/test_warmup_gpu.py

SUITE="$OUT_DIR/suite.md"
{
  echo "# GPU suite ($MODE)"
  echo
  echo "- Date: $(date -u +%Y-%m-%d) ($(date -u +%H:%M) UTC)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "- Device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
  else
    echo "- Device: CPU ($(nproc) cores)"
  fi
  echo "- Software: $("$PY" - <<'PYEOF' 2>&1
import importlib.metadata as m
import platform

out = [f"Python {platform.python_version()}"]
for name in ("torch", "triton", "transformers", "peft"):
    try:
        out.append(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        pass
print(", ".join(out))
PYEOF
)"
  echo "- Mode: $MODE$([ "$DRY" = 1 ] && echo ' (dry run)')"
  echo
  echo "| step | exit code | seconds | budget s |"
  echo "| --- | ---: | ---: | ---: |"
} > "$SUITE"

step() {  # step NAME BUDGET OUTPUT-FILE COMMAND...
  local name=$1 budget=$2 file=$3 start rc
  shift 3
  if [ "$DRY" = 1 ]; then
    echo "[$name, ${budget}s -> $file] $*"
    return 0
  fi
  echo "== $name (budget ${budget}s): $*" | tee -a "$OUT_DIR/log.txt"
  start=$(date +%s)
  timeout --signal=INT --kill-after=10 "$budget" "$@" >> "$file" 2>&1
  rc=$?
  echo "| $name | $rc$([ $rc -eq 124 ] && echo ' (time-out)') | $(( $(date +%s) - start )) | $budget |" >> "$SUITE"
  echo "== $name: exit $rc after $(( $(date +%s) - start ))s" | tee -a "$OUT_DIR/log.txt"
}

step "pytest -m gpu, warm-up" "$B_WARMUP" "$OUT_DIR/pytest-gpu.txt" \
  "$PY" -m pytest -o addopts="" -p no:cacheprovider -q -rfE -m gpu "$WARMUP_TEST"
step "pytest -m gpu, the rest" "$B_PYTEST" "$OUT_DIR/pytest-gpu.txt" \
  "$PY" -m pytest -o addopts="" -p no:cacheprovider -q -rfE -m gpu "${XDIST_GPU[@]}" \
  --deselect "$WARMUP_TEST" tests/kernels
# Cold compile caches, so the warm-up cost it reports is a fresh worker's.
step "engine bench" "$B_ENGINE" "$OUT_DIR/log.txt" \
  env TRITON_CACHE_DIR="$COLD/triton" TORCHINDUCTOR_CACHE_DIR="$COLD/inductor" \
  "$PY" bench/engine_gpu.py "${ENGINE_ARGS[@]}" --md "$OUT_DIR/engine.md" --json "$OUT_DIR/engine.json"
step "kernels --quick" "$B_KERNELS" "$OUT_DIR/log.txt" \
  "$PY" bench/kernels.py "${KERNEL_ARGS[@]}" --md "$OUT_DIR/kernels.md" --json "$OUT_DIR/kernels.json"
step "kernel test grid" "$B_GRID" "$OUT_DIR/pytest-grid.txt" \
  "$PY" -m pytest -o addopts="" -p no:cacheprovider -q -rfE -m "not gpu" "${XDIST[@]}" "${GRID[@]}"
[ "$DRY" = 1 ] || cat "$SUITE"
