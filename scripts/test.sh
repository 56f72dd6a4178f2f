#!/usr/bin/env bash
# Installs everything (scripts/setup.sh), then runs the whole test suite against
# real peers, then the linters. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || { echo "test: setup failed" >&2; exit 1; }
mkdir -p test-artifacts
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [ "$rc" -eq 5 ]; then echo "test: pytest collected no tests" >&2; fi
.venv/bin/ruff check cti pbx ivr sms_gateway tests bench || rc=1
.venv/bin/mypy || rc=1
exit "$rc"
