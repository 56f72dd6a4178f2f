#!/usr/bin/env bash
# One-stop setup for a fresh Debian 12 machine: system packages, the Python
# virtualenv with pinned dependencies, and the node-smpp test SMSC.
# Idempotent: each step is skipped when what it would install is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-system.sh

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.cti-deps
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade "pip>=24"
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
  echo "$want" > "$stamp"
  echo "setup: python dependencies installed"
else
  echo "setup: python dependencies present"
fi

if [ -f tests/smsc/package.json ]; then
  lockhash=$(cat tests/smsc/package.json tests/smsc/package-lock.json 2>/dev/null | sha256sum | cut -d' ' -f1)
  if [ ! -f tests/smsc/node_modules/.cti-stamp ] || [ "$(cat tests/smsc/node_modules/.cti-stamp)" != "$lockhash" ]; then
    (cd tests/smsc && npm ci --no-audit --no-fund --loglevel=error)
    echo "$lockhash" > tests/smsc/node_modules/.cti-stamp
    echo "setup: node-smpp SMSC installed"
  else
    echo "setup: node-smpp SMSC present"
  fi
fi
