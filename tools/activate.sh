# Sourced by tools/main.sh and tools/test.sh: build/refresh .venv, then the offline environment both run in.
bash tools/env.sh
export PATH="$PWD/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export CLVQ_HOME="${CLVQ_HOME:-$PWD/cache}"
