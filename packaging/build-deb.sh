#!/usr/bin/env bash
# Build the Debian package: dist/automagik-telemetry_<version>_<arch>.deb (run by `make deb`).
#
# Offline by design: the only downloads are wheels from the configured Python index (PyPI), once per
# (pyproject.toml, requirements, Python, architecture), into a cached wheelhouse under build/. Everything
# after that -- the project's wheel, the private virtualenv, dpkg-buildpackage -- runs with --no-index
# against that wheelhouse. See packaging/README.md for why the package bundles a virtualenv.
#
# Environment:
#   DEB_EXTRAS    the pyproject extras bundled into the venv (default "agent,systemd"; adding "embedded"
#                 bundles chDB for sink = "embedded": a package of about 180 MB instead of 5 MB)
#   DEB_VERSION   override the package version (default: [project] version of pyproject.toml, PEP 440
#                 pre-releases mapped to Debian's "~", e.g. 1.0rc1 -> 1.0~rc1)
#   BUILD_DIR     scratch directory (default build/deb); the wheelhouse cache lives in build/wheelhouse
#   DIST_DIR      where the .deb goes (default dist)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build/deb}
DIST_DIR=${DIST_DIR:-$ROOT/dist}
CACHE_DIR=$ROOT/build/wheelhouse
# The interpreter the package's virtualenv runs on: Debian 12's python3.11, named by its minor version
# because the bundled wheels (orjson, zstandard, ...) are built for CPython 3.11 only.
PYTHON=/usr/bin/python3.11
PACKAGE=automagik-telemetry

log() { printf 'make deb: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
started=$SECONDS

# One build at a time per checkout: two would share build/deb and dist/ (parallel test runs call make deb).
mkdir -p "$ROOT/build"
exec 9>"$ROOT/build/.make-deb.lock"
if ! flock --nonblock 9; then
    log "waiting for another make deb in this checkout to finish"
    flock 9
fi

for tool in "$PYTHON" dpkg-buildpackage dh; do
    command -v "$tool" >/dev/null || die "$tool is missing: run scripts/bootstrap.sh (it installs python3.11-venv, debhelper, build-essential)"
done

# ---- version ------------------------------------------------------------------------------------
upstream_version=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
# PEP 440 -> Debian: pre-releases and dev releases sort before the release ("~"), post-releases after.
deb_version=${DEB_VERSION:-$("$PYTHON" - "$upstream_version" <<'EOF'
import re, sys
v = sys.argv[1].lower()
v = re.sub(r"[.-]?(a|alpha|b|beta|c|rc|pre|preview)[.-]?(\d*)", lambda m: "~" + {"alpha": "a", "beta": "b",
           "c": "rc", "pre": "rc", "preview": "rc"}.get(m.group(1), m.group(1)) + m.group(2), v)
v = re.sub(r"[.-]?dev[.-]?(\d*)", r"~dev\1", v)
v = re.sub(r"[.-]?post[.-]?(\d*)", r"+post\1", v)
print(v.replace("_", "."))
EOF
)}
arch=$(dpkg --print-architecture)
extras=${DEB_EXTRAS:-agent,systemd}
[[ $extras =~ ^[a-z]+(,[a-z]+)*$ ]] || die "DEB_EXTRAS=$extras: a comma-separated list of pyproject extras"
deb_name=${PACKAGE}_${deb_version}_${arch}.deb
log "building $deb_name (project version $upstream_version)"

# ---- 1. tool venv: a pip that runs on the target interpreter ------------------------------------
tools=$ROOT/build/deb-tools
tools_stamp=$tools/.build-requirements-$(sha256sum packaging/build-requirements.txt | cut -c1-16)
if [[ ! -e $tools_stamp ]]; then
    log "creating the build tools venv $tools"
    rm -rf "$tools"
    "$PYTHON" -m venv "$tools"
    # setuptools and wheel, pinned: systemd-python's setup.py is built with them (no build isolation).
    "$tools/bin/python" -m pip install --quiet --disable-pip-version-check -r packaging/build-requirements.txt
    touch "$tools_stamp"
fi
PIP=("$tools/bin/python" -m pip --disable-pip-version-check)
# Steps after the download must not reach any index: no config files, no PIP_* variables.
PIP_OFFLINE=(env PIP_CONFIG_FILE=/dev/null "$tools/bin/python" -m pip --isolated --disable-pip-version-check)

# ---- 2. wheelhouse (cached) ---------------------------------------------------------------------
py_tag=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
# Keyed on what decides the wheels: the dependency lists of pyproject.toml (not the rest of it), the pins.
key=$({ "$PYTHON" -c 'import json, sys, tomllib; d = tomllib.load(open("pyproject.toml", "rb"))
o = d["project"]["optional-dependencies"]
print(json.dumps([d["build-system"]["requires"], d["project"]["dependencies"], [o[e] for e in sys.argv[1].split(",")]]))' "$extras"
      cat packaging/requirements.txt packaging/build-requirements.txt; } | sha256sum | cut -c1-16)
wheelhouse=$CACHE_DIR/$py_tag-$arch-${extras//,/-}-$key
if [[ -e $wheelhouse/.complete ]]; then
    log "wheelhouse: cached ($wheelhouse)"
else
    log "wheelhouse: downloading wheels into $wheelhouse"
    t0=$SECONDS
    rm -rf "$wheelhouse" && mkdir -p "$wheelhouse"
    # The dependencies as the package installs them: pyproject's extras (DEB_EXTRAS), constrained to the
    # pins. --only-binary: no sdist build script runs on the build host, except systemd-python's (it has
    # no wheel; it compiles against libsystemd-dev, which bootstrap.sh installs).
    "${PIP[@]}" wheel --quiet --only-binary :all: --no-binary systemd-python --no-build-isolation \
        --wheel-dir "$wheelhouse" \
        -c packaging/requirements.txt \
        $("$PYTHON" -c 'import sys, tomllib; o = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
print(" ".join(r for e in sys.argv[1].split(",") for r in o[e]))' "$extras")
    "${PIP[@]}" download --quiet --only-binary :all: --dest "$wheelhouse" -r packaging/build-requirements.txt
    touch "$wheelhouse/.complete"
    # Old wheelhouses of these extras (other keys) are dead weight.
    find "$CACHE_DIR" -mindepth 1 -maxdepth 1 -type d -name "$py_tag-$arch-${extras//,/-}-*" ! -path "$wheelhouse" \
        -exec rm -rf {} +
    log "wheelhouse: done in $((SECONDS - t0)) s"
fi

# ---- 3. source tree for dpkg-buildpackage ------------------------------------------------------
src=$BUILD_DIR/$PACKAGE-$deb_version
rm -rf "$BUILD_DIR" && mkdir -p "$src"
# Only what the package is built from: the two Python packages, the metadata, the docs, the ClickHouse
# migrations (`schema apply` reads them from /usr/share/automagik-telemetry/clickhouse).
cp -a pyproject.toml README.md client daemon docs "$src/"
mkdir -p "$src/deploy" && cp -a deploy/clickhouse "$src/deploy/"
find "$src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
cp -a packaging/debian "$src/debian"
cp -a packaging/requirements.txt "$src/debian/requirements.txt"
cp -a packaging/README.md "$src/debian/README.packaging.md"
commit_time=$(git log -1 --format=%ct 2>/dev/null || date +%s)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
cat >"$src/debian/changelog" <<EOF
$PACKAGE ($deb_version) unstable; urgency=medium

  * Built by packaging/build-deb.sh from commit $commit (plus any uncommitted changes).

 -- automagik-telemetry maintainers <maintainers@automagik-telemetry.invalid>  $(date -R -u -d "@$commit_time")
EOF

# ---- 4. the project's wheel (offline: setuptools and wheel come from the wheelhouse) ------------
wheels=$BUILD_DIR/wheels
t0=$SECONDS
"${PIP_OFFLINE[@]}" wheel --quiet --no-deps --no-index --find-links "$wheelhouse" --wheel-dir "$wheels" "$src"
rm -rf "$src/build" "$src"/*.egg-info "$src"/client/*.egg-info "$src"/daemon/*.egg-info
log "project wheel: $((SECONDS - t0)) s"

# ---- 5. dpkg-buildpackage (debian/rules builds the venv from the two wheel directories) ----------
log "dpkg-buildpackage"
t0=$SECONDS
export AT_PIP="env PIP_CONFIG_FILE=/dev/null $tools/bin/python -m pip --isolated --disable-pip-version-check"
export AT_WHEELHOUSE=$wheelhouse AT_WHEELS=$wheels AT_EXTRAS=$extras AT_UPSTREAM_VERSION=$upstream_version AT_PYTHON=$PYTHON
export SOURCE_DATE_EPOCH=$commit_time
buildlog=$BUILD_DIR/dpkg-buildpackage.log
if ! (cd "$src" && dpkg-buildpackage --build=binary --no-sign) >"$buildlog" 2>&1; then
    tail -n 40 "$buildlog" >&2
    die "dpkg-buildpackage failed (full log: $buildlog)"
fi

log "dpkg-buildpackage: $((SECONDS - t0)) s"
mkdir -p "$DIST_DIR"
cp "$BUILD_DIR/$deb_name" "$DIST_DIR/$deb_name"
log "built $DIST_DIR/$deb_name ($(du -h "$DIST_DIR/$deb_name" | cut -f1)) in $((SECONDS - started)) s"
echo "$DIST_DIR/$deb_name"
