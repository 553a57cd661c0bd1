#!/usr/bin/env bash
# Set up what the browser test (tests/test_browser.py, marker `browser`) needs:
#   - Debian's chromium at /usr/bin/chromium (apt), driven by Playwright through executable_path
#     (we never run `playwright install`: no browser downloads from outside the package registries);
#   - JupyterLab and Playwright in the project venv (pip, with constraints.txt).
# Idempotent: does nothing when everything is already there. Called by tools/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "[browser] no .venv: run tools/env.sh first" >&2; exit 1; }

if ! command -v chromium >/dev/null 2>&1; then
  echo "[browser] installing Debian chromium (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if ! "$PY" -c "import playwright, jupyterlab" >/dev/null 2>&1; then
  echo "[browser] installing jupyterlab and playwright into .venv (pip)"
  "$PY" -m pip install -q --disable-pip-version-check -c constraints.txt jupyterlab playwright
fi
echo "[browser] ready: $(chromium --version 2>/dev/null | head -1); $("$PY" -c 'import jupyterlab, importlib.metadata as m; print("jupyterlab", jupyterlab.__version__, "playwright", m.version("playwright"))')"
