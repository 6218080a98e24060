#!/usr/bin/env bash
# Install what is missing, then lint, type-check and run the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
source "$(dirname "$0")/_setup.sh"
ensure_venv
ensure_python_deps dev,ml
ensure_chromium
ensure_mariadb_running
cd "$ROOT"
say "ruff"
"$VENV/bin/ruff" check .
say "mypy --strict"
"$VENV/bin/mypy"
say "pytest"
set +e
"$VENV/bin/pytest" -q -p no:cacheprovider "$@"
status=$?
set -e
# Exit 5 means no tests were collected (e.g. a filter matched nothing): not a failure of the suite.
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests" >&2
    exit 0
fi
exit "$status"
