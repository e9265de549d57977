# Which torch set-up installs, sourced by scripts/setup.sh (`bash scripts/setup.sh torch` says it).
# choose_torch [OSTYPE] sets TORCH_SPEC (pip arguments) and TORCH_WHY (one line for the user):
#   POLYPSAM_TORCH_SPEC set   -> exactly that;
#   nvidia-smi on PATH        -> PyPI's torch, a CUDA build (torch, nvidia-*, triton: ~5.2 GB);
#   Linux without nvidia-smi  -> the CPU-only build from PyTorch's CPU index (~0.7 GB), same pins;
#   macOS and others          -> PyPI's torch (it has no CUDA libraries there).
# settle_torch_index PYTHON: where the CPU index was chosen but cannot be reached (an offline
# mirror, a firewall), PyPI's build instead, said in TORCH_WHY (pip would otherwise retry that
# index for every dependency, minutes lost).
# choose_torch uses bash builtins only: the test runs it with a PATH holding nothing but a fake
# nvidia-smi. POLYPSAM_TORCH_CPU_INDEX names another CPU index (a mirror; the test's local one).
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
TORCH_CPU_INDEX=${POLYPSAM_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
TORCH_SIZES="about 1 GB instead of 5.5 GB"

choose_torch() {
  local os=${1:-$OSTYPE}
  if [ -n "${POLYPSAM_TORCH_SPEC:-}" ]; then
    TORCH_SPEC=$POLYPSAM_TORCH_SPEC
    TORCH_WHY="POLYPSAM_TORCH_SPEC chooses the torch to install"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    TORCH_SPEC=$TORCH_PINS
    TORCH_WHY="NVIDIA driver found (nvidia-smi): PyPI's torch with its CUDA libraries (about 5.5 GB)"
  elif [[ $os == linux* ]]; then
    TORCH_SPEC="$TORCH_PINS --extra-index-url $TORCH_CPU_INDEX"
    TORCH_WHY="no NVIDIA GPU found (no nvidia-smi on PATH): the CPU-only torch from PyTorch's"
    TORCH_WHY+=" CPU index $TORCH_CPU_INDEX ($TORCH_SIZES). For the CUDA build anyway:"
    TORCH_WHY+=" POLYPSAM_TORCH_SPEC=\"$TORCH_PINS\" bash scripts/setup.sh"
  else
    TORCH_SPEC=$TORCH_PINS
    TORCH_WHY="PyPI's torch for $os (no CUDA libraries there)"
  fi
}

settle_torch_index() {
  local python=$1
  [[ $TORCH_SPEC == *"--extra-index-url $TORCH_CPU_INDEX" ]] || return 0
  if ! "$python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=15)" \
       "$TORCH_CPU_INDEX/torch/" >/dev/null 2>&1; then
    TORCH_SPEC=$TORCH_PINS
    TORCH_WHY="no NVIDIA GPU found (no nvidia-smi on PATH), but PyTorch's CPU index"
    TORCH_WHY+=" $TORCH_CPU_INDEX cannot be reached from here: PyPI's torch instead, with CUDA"
    TORCH_WHY+=" libraries it will not use ($TORCH_SIZES for the CPU-only build; see"
    TORCH_WHY+=" docs/development.md)"
  fi
}
