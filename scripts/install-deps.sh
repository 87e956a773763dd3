#!/usr/bin/env bash
# Idempotent installer of the system tools the tests and the ops checks need:
#   redis-server, redis-cli  (Debian: redis-server, redis-tools)  - tests that talk to a real Redis
#   promtool                 (Debian: prometheus)                 - scripts/check-ops.sh
#   docker-compose           (Debian: docker-compose, v1.29)      - scripts/check-ops.sh (config validation only)
#   curl                     (Debian: curl)                       - scripts/check-run.sh
#   openssl                  (Debian: openssl)                    - TLS tests make their own certificates
#   haproxy                  (Debian: haproxy)                    - scripts/check-ops.sh (haproxy -c only)
# hadolint, which only scripts/check-ops.sh uses, is installed by scripts/install-hadolint.sh,
# which check-ops.sh calls itself; the test command (scripts/test.sh) does not need it.
# Anything already on PATH is skipped; `apt-get update` runs at most once, and only when an
# apt package is missing. Installing `prometheus` or `haproxy` never starts their daemons.
# Runs as root (CI) or, for a normal user, through sudo when it exists.
#
#   scripts/install-deps.sh            all of the above, then the client libraries
#   scripts/install-deps.sh TOOL...    only these apt tools (e.g. `haproxy`, for check-ops.sh)
set -euo pipefail

# haproxy lands in /usr/sbin, which a normal user's PATH may lack.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac

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
APT_TOOLS=(redis-server redis-cli promtool docker-compose curl openssl haproxy)
declare -A APT_PKG=(
    [curl]=curl
    [openssl]=openssl
    [redis-server]=redis-server
    [redis-cli]=redis-tools
    [promtool]=prometheus
    [docker-compose]=docker-compose
    [haproxy]=haproxy
)
only_named=false
if [ "$#" -gt 0 ]; then
    for tool in "$@"; do
        [ -n "${APT_PKG[$tool]+x}" ] || die "unknown tool $tool (known: ${APT_TOOLS[*]})"
    done
    APT_TOOLS=("$@")
    only_named=true
fi

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

$only_named && exit 0
"$(dirname "${BASH_SOURCE[0]}")/install-clients.sh"   # the OpenAI client libraries tests/api/clients.rs runs (pinned; a stamp skips a rerun)
"$(dirname "${BASH_SOURCE[0]}")/install-browser.sh"   # Chromium and playwright-core/axe-core for tests/api/browser.rs (pinned; a stamp skips a rerun)
