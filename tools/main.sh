#!/usr/bin/env bash
# The main job on the embedded default (movie sentiment, all-MiniLM-L6-v2 from a registry package),
# fully offline. Extra arguments go to `clvq main` (see `clvq main --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/env.sh
export PATH="$PWD/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export CLVQ_HOME="${CLVQ_HOME:-$PWD/cache}"
exec clvq main "$@"
