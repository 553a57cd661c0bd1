#!/usr/bin/env bash
# The main job on the embedded default (movie sentiment, all-MiniLM-L6-v2 from a registry package),
# fully offline. Extra arguments go to `clvq main` (see `clvq main --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/activate.sh
exec clvq main "$@"
