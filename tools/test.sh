#!/usr/bin/env bash
# The test suite, from a clean clone: environment, notebook hygiene, notebook tests, pytest.
#   bash tools/test.sh          the suite CI runs (.ci/run calls exactly this): everything not flagged slow/browser/gpu;
#                               6 min on 2 idle cores from a fresh clone, 20 min under heavy load; no outcome depends on speed
#   bash tools/test.sh --slow   then the slow tier: `#| slow` notebook cells and `slow`/`browser` pytest marks
#                               (real default model, fault injection at every stage, decoder LMs, JupyterLab)
#   bash tools/test.sh --only-slow   the slow tier alone (environment and hygiene checks still run first)
set -euo pipefail
cd "$(dirname "$0")/.."
fast=1 slow=0
case "${1:-}" in
  "") ;;
  --slow) slow=1 ;;
  --only-slow) slow=1 fast=0 ;;
  *) echo "usage: bash tools/test.sh [--slow | --only-slow]" >&2; exit 2 ;;
esac
source tools/activate.sh
t_start=$SECONDS
step() { echo; echo "=== [$(( SECONDS - t_start ))s] $* ==="; }

step "clean check: notebooks are committed without outputs or stray metadata"
nbdev_clean
if git rev-parse --git-dir >/dev/null 2>&1 && [ -n "$(git status --porcelain -- nbs)" ]; then
  git status --porcelain -- nbs; echo "FAIL: run nbdev_clean and commit the cleaned notebooks"; exit 1; fi

step "export sync: clvq_nb/ is what nbs/ exports"
nbdev_export
if git rev-parse --git-dir >/dev/null 2>&1 && [ -n "$(git status --porcelain -- clvq_nb)" ]; then
  git status --porcelain -- clvq_nb; echo "FAIL: run nbdev_export and commit clvq_nb/"; exit 1; fi

# pytest exits 5 when a marker selects nothing: that is not a failure of this script.
pyt() { python -m pytest "$@" || { rc=$?; [ $rc -eq 5 ] && echo "(no tests selected)" || return $rc; }; }

if [ $fast -eq 1 ]; then
  step "nbdev_test: every library notebook cell runs as a test (slow/gpu cells skipped here)"
  n=$(ls nbs/[0-9]*.ipynb | wc -l)
  [ "$n" -gt 0 ] || { echo "FAIL: no library notebooks matched"; exit 1; }
  echo "$n library notebooks"
  nbdev_test --path nbs --n_workers 2 --timing

  step "pytest: the suite (not slow, browser or gpu)"
  pyt tests -q -m "not slow and not browser and not gpu" --durations=10
fi

if [ $slow -eq 1 ]; then
  step "slow notebook cells (#| slow): real default model"
  slow_nbs=$(grep -l '#| slow' nbs/[0-9]*.ipynb || true)
  for nb in $slow_nbs; do nbdev_test --path "$nb" --flags slow --timing; done

  step "pytest: slow tests (real default model, faults at every stage, decoder LMs) and the browser test"
  if [ -f tools/browser_setup.sh ]; then bash tools/browser_setup.sh; fi
  pyt tests -q -m "(slow or browser) and not gpu" --durations=20
fi
step "done"
