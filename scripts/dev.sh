#!/usr/bin/env bash
# One entry point for a fresh machine: set up .venv, then run the demo, the daemon or the tests.
#   bash scripts/dev.sh demo   # the offline demo (or the daemon, once ./clausewatch.toml exists)
#   bash scripts/dev.sh test   # the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
    rm -f .venv/.installed-* && touch "$stamp"
fi

case "${1:-demo}" in
    demo)
        shift || true
        if [ -f clausewatch.toml ]; then
            exec .venv/bin/clausewatch run -c clausewatch.toml "$@"
        fi
        exec .venv/bin/clausewatch demo "$@"
        ;;
    test)
        shift || true
        # System tools some tests need (promtool, prometheus, hadolint); quick once installed.
        bash scripts/ci-deps.sh
        exec .venv/bin/python -m pytest "$@"
        ;;
    *)
        echo "usage: bash scripts/dev.sh [demo|test] [args…]" >&2
        exit 2
        ;;
esac
