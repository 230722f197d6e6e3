#!/usr/bin/env bash
# Release-size capture check on an NVIDIA GPU, offline (see scripts/gpu_check.py for what it measures).
#
#   scripts/gpu_check.sh [--steps 3] [--parts 8] [--tokens 1024] [--device cuda:0]
#   scripts/gpu_check.sh --small          # reduced size on the CPU
#
# Installs and downloads nothing: it needs this repository and a Python with torch (CUDA build),
# diffusers and transformers; set PYTHON=/path/to/python to pick the interpreter.
# Prints one JSON line; exits non-zero when the capture is not exact or CUDA is missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python}"

export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
# No network: never try the Hugging Face hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
# Deterministic cuBLAS workspaces, so that two identical runs give identical bits.
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"

small=0
for arg in "$@"; do
    if [[ "${arg}" == "--small" ]]; then small=1; fi
done

if ! command -v "${python}" >/dev/null 2>&1; then
    echo "gpu_check.sh: no '${python}' on PATH; set PYTHON=/path/to/python" >&2
    exit 3
fi

if [[ "${small}" == 0 ]]; then
    if ! cuda_info="$("${python}" -c 'import torch, sys
ok = torch.cuda.is_available()
print(torch.cuda.get_device_name(0) if ok else f"torch {torch.__version__}, CUDA build {torch.version.cuda}")
sys.exit(0 if ok else 1)' 2>&1)"; then
        echo "gpu_check.sh: ERROR: CUDA is not available (${cuda_info##*$'\n'})." >&2
        echo "gpu_check.sh: this check needs an NVIDIA GPU and a CUDA build of torch; use --small to run on the CPU." >&2
        exit 3
    fi
    echo "gpu_check.sh: running on ${cuda_info}" >&2
fi

exec "${python}" "${root}/scripts/gpu_check.py" "$@"
