#!/usr/bin/env bash
# The paper's regime on one lent GPU: the `paper_gpu` preset's robustness table and timesteps sweep (VGG5, CIFAR-10
# (JPEG copy), SNN-BP at T = 100, SNN-conv at T = 500, the sweep at T = 50-200, 1000 images, 3 seeds), sized by
# experiments/estimate_device_time.py to about 8 minutes of H200 time.
#
#   experiments/gpu_paper.sh --prepare      on the CPU machine: fill .carry/ (git-ignored; name it in the device
#                                           tool's `carry`): the wheels the device lacks and the CIFAR-10 JPEG copy
#   experiments/gpu_paper.sh [OUTDIR]       on the device (OUTDIR: $OUT): offline install, GPU check, the studies
#   experiments/gpu_paper.sh --dry-run [OUTDIR]   the same steps on CPU at tiny scale (minutes), to check the script
#
# The run folder runs/paper_gpu (git-ignored, kept on a warm machine between calls) holds models and cells, so a
# second call resumes where a cut first one stopped (each study cell is one atomic file). Each call leaves in OUTDIR:
#   summary.md        device, versions, exit status, the two tables
#   paper_gpu.log     the run's output
#   paper_gpu.tgz     the studies' results without models (cells, tables, comparisons, checks, plots): commit them
#                     under experiments/results/paper_gpu/
# BUDGET (seconds, default 540) bounds the studies; PYTHON selects the interpreter (default python3).
set -u -o pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/snn-adv-gpu-paper}
MODE=run
for arg in "$@"; do
  case "$arg" in
    --prepare) MODE=prepare ;;
    --dry-run) MODE=dry ;;
    -*) echo "gpu_paper.sh: unknown option $arg (allowed: --prepare, --dry-run)" >&2; exit 2 ;;
    *) OUT=$arg ;;
  esac
done
PY=${PYTHON:-python3}
CARRY=.carry
SHARED=${SHARED:-../shared/datasets/cifar10-jpeg}
say() { echo "[gpu_paper $(date -u +%H:%M:%S)] $*"; }

if [[ $MODE == prepare ]]; then
  mkdir -p "$CARRY/wheels" "$CARRY/cifar10-jpeg"
  say "wheels the device lacks: spikingjelly 0.0.0.0.14 (CuPy kernels)"
  "$PY" -m pip download -q --no-deps -d "$CARRY/wheels" spikingjelly==0.0.0.0.14 || exit 1
  say "CIFAR-10 (JPEG copy) from $SHARED"
  cp "$SHARED"/cifar10-jpeg-*.tar.gz "$SHARED"/SHA256SUMS "$CARRY/cifar10-jpeg/" || exit 1
  (cd "$CARRY/cifar10-jpeg" && sha256sum -c --quiet SHA256SUMS) || exit 1
  du -sh "$CARRY"
  say "ready: run the device tool with carry [\"$CARRY\"] and the command: bash experiments/gpu_paper.sh \$OUT"
  exit 0
fi

mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore::FutureWarning
if compgen -G "$CARRY/wheels/*.whl" >/dev/null && ! "$PY" -c "import spikingjelly" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$CARRY"/wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
DATA=$CARRY/cifar10-jpeg
[[ -f $DATA/SHA256SUMS ]] || DATA=$SHARED
RUN=runs/paper_gpu
ARGS=(--config paper_gpu --out "$RUN" --data-root "$DATA" --quiet)
BUDGET=${BUDGET:-540}
if [[ $MODE == dry ]]; then
  RUN=runs/paper_gpu_dry
  ARGS=(--config paper_gpu --out "$RUN" --data-root "$DATA" --quiet --set 'device="cpu"'
        --set models.ann.epochs=1 --set models.ann.train_count=200 --set models.ann.warmup_epochs=0
        --set models.snn_conv.timesteps=6 --set models.snn_conv.calibration_count=50
        --set models.snn_bp.timesteps=4 --set models.snn_bp.train_count=64
        --set studies.robustness.test_count=20 --set studies.timesteps.test_count=20
        --set 'studies.timesteps.timesteps=[2,4]' --set 'studies.timesteps.levels=[null,2]')
  BUDGET=${BUDGET_DRY:-900}
fi

SUMMARY=$OUT/summary.md
{
  echo "# paper_gpu ($MODE, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
  echo '```'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  "$PY" - <<'EOF'
import torch, snn_adv
from snn_adv.neurons import cupy_available
from snn_adv.zoo import resolve_device
print("torch", torch.__version__, "cuda", torch.version.cuda, "cupy_available", cupy_available())
print("device and backend the preset gets here:", *resolve_device("auto", "auto"))
EOF
  echo '```'
} >"$SUMMARY" 2>&1
cat "$SUMMARY"
if [[ $MODE == run ]] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_paper.sh: no CUDA device here (use --dry-run on a CPU)" | tee -a "$SUMMARY" >&2
  exit 3
fi

say "studies robustness and timesteps, at most ${BUDGET}s"
START=$SECONDS
timeout "$BUDGET" "$PY" -m snn_adv.cli study robustness timesteps "${ARGS[@]}" >"$OUT/paper_gpu.log" 2>&1
rc=$?
{ echo; echo "## studies (exit $rc; 124: cut at the budget, rerun to resume), $((SECONDS - START)) s"; echo;
  for study in robustness timesteps; do echo "### $study"; cat "$RUN/$study/table.md" 2>/dev/null; echo; done
  echo "cells: $(ls "$RUN"/*/cells/*.json 2>/dev/null | wc -l)"; } >>"$SUMMARY"
tar -czf "$OUT/paper_gpu.tgz" -C "$RUN" --exclude='.*.tmp' $(cd "$RUN" && ls -d robustness timesteps 2>/dev/null)
tail -n 3 "$OUT/paper_gpu.log"
say "done (exit $rc): $OUT"
exit $rc
