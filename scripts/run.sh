#!/usr/bin/env bash
# Install what is missing and run the daemon on the embedded defaults (SQLite under
# ~/.local/share/orchestrator, admin API on 127.0.0.1:8080, LM Studio at :1234 when it runs,
# else the embedded llama.cpp model). Extra arguments go to `orchestrator run`.
source "$(dirname "$0")/_setup.sh"
ensure_venv
ensure_python_deps ml
exec "$VENV/bin/orchestrator" run "$@"
