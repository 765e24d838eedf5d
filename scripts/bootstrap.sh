#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root), used by `make test`/`make venv`.
#   1. Debian packages (ClickHouse 18.16 server for the test fixture, systemd tools, build deps).
#   2. .venv with Python >= 3.11 and the project installed editable with all extras.
#   3. (full mode; step 4 below) tests/otlp/js/node_modules: the OpenTelemetry JS SDK client of the
#      OTLP end-to-end test (npm ci from its package-lock.json).
# Fast when everything is already in place: dpkg -s check, a pip stamp keyed on pyproject.toml and
# an npm stamp keyed on tests/otlp/js/package-lock.json.
#
# `bootstrap.sh --demo` (used by `make demo`) sets up only what the demo needs: python3-venv and a .venv
# with the agent and embedded extras (no ClickHouse server, no build tools); a full set-up counts too.
set -euo pipefail

MODE=full
if [[ ${1:-} == --demo ]]; then
    MODE=demo
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

log() { printf 'bootstrap: %s\n' "$*"; }

APT_PACKAGES=(
    clickhouse-server clickhouse-client   # Debian 12 ships ClickHouse 18.16.1: the real-server test fixture
    zookeeper                             # ZooKeeper 3.8 jars (+ default-jre): tests/clickhouse_cluster.py runs its own
    libsystemd-dev pkg-config gcc python3-dev  # build deps of systemd-python
    python3-venv
    systemd                               # systemd-socket-activate, systemd-analyze
    debhelper build-essential python3.11-venv  # `make deb` (packaging/build-deb.sh)
    systemd-container                     # systemd-nspawn: tests/packaging runs the units in a container
    prometheus                            # promtool: tests/deploy checks deploy/prometheus
    make
)
EXTRAS=agent,systemd,embedded,test
# Node.js + npm for tests/otlp/js, only where no `node`/`npm` is on PATH: a machine may carry a
# NodeSource `nodejs` package (it bundles npm and Conflicts with Debian's `npm`), so listing `npm`
# unconditionally would make apt replace that Node.js with Debian 12's (18.x, still enough there).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    APT_PACKAGES+=(nodejs npm)
fi
if [[ $MODE == demo ]]; then
    APT_PACKAGES=(python3-venv)
    EXTRAS=agent,embedded
fi

# ---- 1. apt packages --------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
    # dpkg -s exits 0 for removed-but-not-purged packages too, so check the status line.
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing Debian packages (${missing[*]}) and not root: install them first" >&2
        exit 1
    fi
    log "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # clickhouse-server's postinst runs `invoke-rc.d clickhouse-server start || exit 1`. With no init
    # system (containers, CI) that would try to launch a system-wide server (and fail the install, or
    # leave a daemon on 8123/9000). A policy-rc.d that answers 101 ("action forbidden") makes
    # invoke-rc.d skip the start; the tests start their own private instance instead.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
        trap '[[ $created_policy == 1 ]] && rm -f "$policy"' EXIT
    fi
    aptlog=$(mktemp)
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
        >"$aptlog" 2>&1; then
        tail -n 40 "$aptlog" >&2
        log "apt: install failed (full log: $aptlog)" >&2
        exit 1
    fi
    rm -f "$aptlog"
    if ((created_policy)); then
        rm -f "$policy"
        created_policy=0
    fi
else
    log "apt: all packages present"
fi

# ---- 2. virtualenv ----------------------------------------------------------------------------
if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    log "venv: $VENV exists ($("$VENV/bin/python" -V 2>&1))"
else
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        log "$PYTHON is $("$PYTHON" -V 2>&1); Python >= 3.11 is required" >&2
        exit 1
    fi
    rm -rf "$VENV"
    log "venv: creating $VENV with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

# ---- 3. project + extras ----------------------------------------------------------------------
hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
full_stamp="$VENV/.installed-$hash"
stamp="$full_stamp"
[[ $MODE == demo ]] && stamp="$VENV/.installed-demo-$hash"
if [[ -e $full_stamp || -e $stamp ]]; then
    log "pip: up to date (stamp ${stamp##*/})"
else
    log "pip: installing -e .[$EXTRAS]"
    # -qq: errors only (the install is otherwise silent; pip still exits non-zero on failure).
    "$VENV/bin/python" -m pip install -qq --disable-pip-version-check -e ".[$EXTRAS]"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi

# ---- 4. Node.js packages of the OTLP e2e client (full mode only) -------------------------------
if [[ $MODE == full ]]; then
    js=tests/otlp/js
    npm_stamp="$js/node_modules/.installed-$(sha256sum "$js/package-lock.json" | cut -d' ' -f1)"
    if [[ -e $npm_stamp ]]; then
        log "npm: up to date (stamp ${npm_stamp##*/})"
    else
        log "npm: ci in $js"
        # npm ci removes node_modules first, so older stamps go with it.
        npm ci --prefix "$js" --no-audit --no-fund --loglevel=error
        touch "$npm_stamp"
    fi
fi

# ---- 5. the original automagik-telemetry 0.1.4 wheel (full mode only) ---------------------------
# tests/otlp/test_otlp_v014.py runs that SDK, unmodified, against the OTLP receiver. Downloaded from PyPI
# into a git-ignored directory, never installed into the venv (it would shadow this package).
if [[ $MODE == full ]]; then
    v014=tests/otlp/.v014
    if compgen -G "$v014/automagik_telemetry-0.1.4-*.whl" >/dev/null; then
        log "0.1.4 wheel: present"
    else
        log "0.1.4 wheel: downloading into $v014"
        # Its metadata says Requires-Python >=3.12; its code runs on 3.11 (the test proves it here).
        "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps -d "$v014" \
            --python-version 3.12 --only-binary :all: \
            automagik-telemetry==0.1.4
    fi
fi
