#!/usr/bin/env bash
# The whole test suite, from a clean clone: environment, notebook hygiene, notebook tests,
# pytest (fast, then the slow-flagged steps). .ci/run calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/activate.sh
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

# pytest exits 5 when a marker selects nothing: that is not a failure of this script.
pyt() { python -m pytest "$@" || { rc=$?; [ $rc -eq 5 ] && echo "(no tests selected)" || return $rc; }; }

step "pytest: fast tests"
pyt tests -q -m "not slow and not browser and not gpu"

step "slow notebook cells (#| slow): real default model"
slow_nbs=$(grep -l '#| slow' nbs/[0-9]*.ipynb || true)
for nb in $slow_nbs; do nbdev_test --path "$nb" --flags slow --timing; done

step "pytest: slow tests (real default model) and the browser test"
if [ -f tools/browser_setup.sh ]; then bash tools/browser_setup.sh; fi
pyt tests -q -m "(slow or browser) and not gpu"
