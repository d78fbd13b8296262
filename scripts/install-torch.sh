#!/usr/bin/env bash
# Installs torch into the venv before the project (the Makefile's set-up runs it):
#   - no NVIDIA GPU (nvidia-smi missing or failing): the CPU build, from PyTorch's CPU wheel index
#     when that index answers, else the plain requirement from the default index (a fallback: on
#     Linux that is PyPI's CUDA build, several GB);
#   - an NVIDIA GPU: a CUDA build; one already installed that satisfies TORCH_SPEC is kept, a CPU
#     build is replaced.
# Overrides (environment, or make variables: `make setup TORCH_SPEC=... TORCH_INDEX=...`):
#   TORCH_SPEC   the requirement (default torch==2.13.0); empty: leave torch as it is
#   TORCH_INDEX  the wheel index to install from, GPU or not (e.g. https://download.pytorch.org/whl/cu128)
#   PY           the venv's python (default .venv/bin/python)
# --dry-run prints the decision (stderr) and the pip command (stdout) and installs nothing.
set -euo pipefail

PY="${PY:-.venv/bin/python}"
TORCH_SPEC="${TORCH_SPEC-torch==2.13.0}"
TORCH_INDEX="${TORCH_INDEX:-}"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
PROBE_TIMEOUT="${TORCH_INDEX_PROBE_TIMEOUT:-5}"
dry_run=0
[ "${1:-}" = "--dry-run" ] && dry_run=1

say() { echo "install-torch: $*" >&2; }

has_nvidia_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
}

# "cuda" / "cpu" for the torch the venv already has, "none" without one (no import needed:
# the CUDA build ships nvidia-* wheels or a +cuXXX local version; CPU builds say +cpu).
installed_torch() {
    "$PY" - <<'EOF' 2>/dev/null || echo none
from importlib import metadata
try:
    dist = metadata.distribution("torch")
except metadata.PackageNotFoundError:
    print("none")
else:
    version = dist.version
    requires = " ".join(dist.requires or [])
    print("cuda" if "+cu" in version or "nvidia-" in requires else "cpu")
EOF
}

index_reachable() {
    python3 - "$1" "$PROBE_TIMEOUT" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
url = sys.argv[1].rstrip("/") + "/torch/"
urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=float(sys.argv[2]))
EOF
}

if [ -z "$TORCH_SPEC" ]; then
    say "TORCH_SPEC is empty: keeping the torch that is installed"
    exit 0
fi

args=(-m pip install -q)
if has_nvidia_gpu; then
    have="$(installed_torch)"
    if [ "$have" = "cpu" ]; then
        say "NVIDIA GPU found, but the venv has a CPU build of torch: installing a CUDA build"
        args+=(--force-reinstall)
    else
        say "NVIDIA GPU found: a CUDA build of $TORCH_SPEC (kept if already installed)"
    fi
    [ -n "$TORCH_INDEX" ] && args+=(--index-url "$TORCH_INDEX")
else
    index="${TORCH_INDEX:-$TORCH_CPU_INDEX}"
    if index_reachable "$index"; then
        say "no NVIDIA GPU: the CPU build of $TORCH_SPEC from $index"
        args+=(--index-url "$index")
    else
        say "no NVIDIA GPU, and $index does not answer: falling back to plain $TORCH_SPEC"
    fi
fi
args+=("$TORCH_SPEC")

if [ "$dry_run" = 1 ]; then
    echo "$PY ${args[*]}"
else
    exec "$PY" "${args[@]}"
fi
