#!/usr/bin/env bash
# Set up .venv/ at the repository root (idempotent), then optionally run a job:
#   bash scripts/setup.sh          # set up only
#   bash scripts/setup.sh demo     # set up, write sample inputs to out/ and segment the frame
#   bash scripts/setup.sh test     # set up, then run the test suite
#   bash scripts/setup.sh torch    # only say which torch set-up would install, and why
# Torch (scripts/torch_choice.sh): pinned, because an unpinned torch pulls several GB of CUDA
# wheels; on Linux without an NVIDIA GPU (no nvidia-smi) the CPU-only build from PyTorch's CPU
# index; POLYPSAM_TORCH_SPEC="..." chooses another (see docs/development.md). torchvision is
# installed only for the tests that compare with Meta's SAM2ImagePredictor (the library never
# imports it). sam2's sdist is built without its CUDA extension and without build isolation.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
source scripts/torch_choice.sh
choose_torch
if [ "${1:-}" = torch ]; then
  settle_torch_index "$PY"
  echo "[setup] torch: $TORCH_SPEC"
  echo "[setup] $TORCH_WHY"
  exit 0
fi
# The stamp names the requirements it installed: editing scripts/requirements.txt re-runs set-up.
STAMP=.venv/.polypsam-setup-$(cat scripts/requirements.txt | "$PY" -c "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:12])")

if [ ! -f "$STAMP" ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  settle_torch_index .venv/bin/python
  echo "[setup] $TORCH_WHY"
  echo "[setup] installing $TORCH_SPEC"
  .venv/bin/pip install -q $TORCH_SPEC 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c "import torch; print('[setup] installed torch', torch.__version__,
      '(CUDA build)' if torch.version.cuda else '(CPU-only build)')" || true
  echo "[setup] installing sam2 1.1.0 (no CUDA extension) and the library"
  SAM2_BUILD_CUDA=0 .venv/bin/pip install -q --no-deps --no-build-isolation sam2==1.1.0 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/pip install -q -r scripts/requirements.txt 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c "import torch, sam2, SimpleITK, slicer, fastapi, pytest" # fail loudly
  touch "$STAMP"
fi
# The library itself is re-installed every time (editable, no dependency resolution): cheap.
.venv/bin/pip install -q --no-deps -e PolypSAMLib 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import polypsam" || { echo "[setup] installing PolypSAMLib failed" >&2; exit 1; }

case "${1:-}" in
  "") echo "[setup] done: .venv is ready" ;;
  demo) shift; exec .venv/bin/python scripts/demo.py "$@" ;;
  test) shift; exec .venv/bin/python -m pytest Testing "$@" ;;
  *) echo "usage: bash scripts/setup.sh [demo|test|torch]" >&2; exit 2 ;;
esac
