#!/usr/bin/env bash
# The whole test suite, from a clean clone: environment, notebook hygiene, notebook tests,
# pytest (fast, then the slow-flagged steps). .ci/run calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/env.sh
export PATH="$PWD/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export CLVQ_HOME="${CLVQ_HOME:-$PWD/cache}"
step() { echo; echo "=== $* ==="; }

step "clean check: notebooks are committed without outputs or stray metadata"
nbdev_clean
if git rev-parse --git-dir >/dev/null 2>&1 && [ -n "$(git status --porcelain -- nbs)" ]; then
  git status --porcelain -- nbs; echo "FAIL: run nbdev_clean and commit the cleaned notebooks"; exit 1; fi

step "export sync: clvq_nb/ is what nbs/ exports"
nbdev_export
if git rev-parse --git-dir >/dev/null 2>&1 && [ -n "$(git status --porcelain -- clvq_nb)" ]; then
  git status --porcelain -- clvq_nb; echo "FAIL: run nbdev_export and commit clvq_nb/"; exit 1; fi

step "nbdev_test: every library notebook cell runs as a test (slow/gpu cells skipped here)"
n=$(ls nbs/[0-9]*.ipynb | wc -l)
[ "$n" -gt 0 ] || { echo "FAIL: no library notebooks matched"; exit 1; }
echo "$n library notebooks"
nbdev_test --path nbs --n_workers 2 --timing

step "pytest: fast tests"
python -m pytest tests -q -m "not slow and not browser and not gpu"

step "slow steps: real default model, slow notebook cells, browser"
nbdev_test --path nbs --n_workers 1 --flags slow --timing
python -m pytest tests -q -m "(slow or browser) and not gpu"
