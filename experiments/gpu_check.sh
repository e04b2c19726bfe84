#!/usr/bin/env bash
# The GPU path in one run (< 8 min on one H100/H200): GPU-marked tests, the CUDA benchmark (torch backend, CuPy
# backend, T ANN steps at T = 8, 16, 100: speed and peak memory) and a short end-to-end run. Writes 5-6 files:
#   OUTDIR/summary.md       device, versions, test summary, benchmark table, end-to-end table, seconds per step
#   OUTDIR/tests.log        pytest -m gpu output
#   OUTDIR/benchmark.json   benchmark result (experiments/benchmark.py --out)
#   OUTDIR/benchmark.log    benchmark output (progress and table)
#   OUTDIR/end_to_end.log   end-to-end run output
#   OUTDIR/cifar10_cpu.tgz  the CIFAR-10 studies' results (when the data is there)
#
# usage: experiments/gpu_check.sh [OUTDIR] [--dry-run]      (OUTDIR default experiments/results/gpu)
#   --dry-run: every step at tiny size on CPU (to check the script where there is no GPU)
# Runs from the repository root with PYTHONPATH (snn-adv is not pip-installed: its torch pin need not match the
# machine's). Wheels in .whl/ (spikingjelly, torchattacks) are installed to /tmp/site first, offline.
# PYTHON selects the interpreter (default python3).
set -u -o pipefail
cd "$(dirname "$0")/.."

OUT=experiments/results/gpu
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -*) echo "gpu_check.sh: unknown option $arg (allowed: --dry-run)" >&2; exit 2 ;;
    *) OUT=$arg ;;
  esac
done
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SLOW=1  # timeout multiplier: a CPU dry run is slower than the GPU run these limits are sized for (< 8 min in all)
[[ $DRY == 1 ]] && SLOW=5
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore::FutureWarning
export SNN_ADV_KERNEL_CACHE=${SNN_ADV_KERNEL_CACHE:-/tmp/snn-adv-kernels}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
SUMMARY=$OUT/summary.md
START=$SECONDS

say() { echo "[gpu_check $(date -u +%H:%M:%S) +$((SECONDS - START))s] $*"; }

step_device() {
  say "device and versions"
  {
    echo "# GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
    echo
    echo '```'
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" - <<'EOF'
import numpy, torch, snn_adv
from snn_adv.neurons import cupy_available
import os; print("snn_adv imported from", os.path.relpath(snn_adv.__file__))
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
print("numpy", numpy.__version__, "cupy_available", cupy_available())
if cupy_available():
    import cupy
    print("cupy", cupy.__version__, "numpy has int (else each kernel gets snn_adv.neurons.cupy_backend.with_numpy_int):",
          hasattr(numpy, "int"))
EOF
    echo '```'
  } >"$SUMMARY" 2>&1
  cat "$SUMMARY"
}

step_tests() {
  say "GPU-marked tests"
  timeout $((150 * SLOW)) "$PY" -m pytest -m gpu -q -p no:cacheprovider tests >"$OUT/tests.log" 2>&1
  local rc=$?
  { echo; echo "## pytest -m gpu (exit $rc)"; echo '```'; tail -n 3 "$OUT/tests.log"; echo '```'; } >>"$SUMMARY"
  tail -n 3 "$OUT/tests.log"
}

step_benchmark() {
  say "benchmark"
  local args=(--device cuda --timesteps 8 16 100 --batch 64 --repeats 5 --time-chunks --memory --memory-timesteps 8 16 100)
  [[ $DRY == 1 ]] && args=(--device cpu --timesteps 2 --batch 4 --repeats 1 --time-chunks --memory --memory-timesteps 3 --memory-batch 2)
  timeout $((180 * SLOW)) "$PY" experiments/benchmark.py "${args[@]}" --out "$OUT/benchmark.json" --markdown "$OUT/bench.md.tmp" \
    >"$OUT/benchmark.log" 2>&1
  local rc=$?
  { echo; echo "## benchmark (exit $rc)"; echo; cat "$OUT/bench.md.tmp" 2>/dev/null || tail -n 20 "$OUT/benchmark.log"; } >>"$SUMMARY"
  rm -f "$OUT/bench.md.tmp"
  tail -n 8 "$OUT/benchmark.log" | grep -v '^{'
}

# The end-to-end step, one function: the robustness and strong studies of the CIFAR-10 (JPEG copy) preset
# `cifar10_cpu` when its archives are in CIFAR_ROOT (default .carry/cifar10-jpeg, a git-ignored folder carried to the
# GPU machine), within the time left before BUDGET seconds; else the Fashion-MNIST quickstart. The studies' results
# (no trained models) are packed into OUTDIR/cifar10_cpu.tgz: cells are resumable, so a cut run keeps what finished.
# A dry run does the same at seconds scale (tiny recipes, 40 test images) on CPU.
CIFAR_ROOT=${CIFAR_ROOT:-.carry/cifar10-jpeg}
BUDGET=${BUDGET:-480}
step_end_to_end() {
  if [[ -f "$CIFAR_ROOT/SHA256SUMS" ]]; then
    local dir=/tmp/snn-adv-gpu-check-cifar10 left=$((BUDGET * SLOW - (SECONDS - START)))
    local tiny=()
    [[ $DRY == 1 ]] && tiny=(--set models.ann.epochs=1 --set models.ann.train_count=200 --set models.ann.warmup_epochs=0
      --set models.snn_conv.timesteps=4 --set models.snn_conv.calibration_count=50 --set models.snn_bp.train_count=100
      --set models.snn_bp.timesteps=2 --set studies.robustness.test_count=40 --set studies.strong.test_count=20)
    say "end to end: CIFAR-10 (JPEG copy) preset cifar10_cpu, robustness and strong, ${left}s left"
    timeout "$left" "$PY" -m snn_adv.cli study robustness strong --config cifar10_cpu --out "$dir" --data-root "$CIFAR_ROOT" \
      "${tiny[@]}" >"$OUT/end_to_end.log" 2>&1
    local rc=$?
    { echo; echo "## end to end: cifar10_cpu robustness and strong (exit $rc; 124: cut at the time budget)"; echo;
      cat "$dir/robustness/table.md" 2>/dev/null; echo; cat "$dir/strong/table.md" 2>/dev/null; } >>"$SUMMARY"
    tar -czf "$OUT/cifar10_cpu.tgz" -C "$dir" --exclude=models . 2>/dev/null
    tail -n 3 "$OUT/end_to_end.log"
    return
  fi
  say "end to end: quickstart"
  local dir=/tmp/snn-adv-gpu-check-quickstart
  rm -rf "$dir"
  if [[ $DRY == 1 ]]; then
    timeout $((120 * SLOW)) "$PY" -c "from snn_adv.quickstart import quickstart, TEST_BUDGET; quickstart('$dir', TEST_BUDGET, progress=False)"
  else
    timeout $((120 * SLOW)) "$PY" -m snn_adv.cli quickstart --out "$dir"
  fi >"$OUT/end_to_end.log" 2>&1
  local rc=$?
  { echo; echo "## end to end: quickstart (exit $rc)"; echo; cat "$dir/robustness/table.md" 2>/dev/null; echo;
    grep -E "^done in" "$OUT/end_to_end.log"; } >>"$SUMMARY"
  tail -n 2 "$OUT/end_to_end.log"
}

step_device
step_tests
step_benchmark
step_end_to_end
echo >>"$SUMMARY"
echo "total $((SECONDS - START)) s" >>"$SUMMARY"
say "done: $(ls "$OUT" | tr '\n' ' ')"
