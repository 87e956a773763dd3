#!/usr/bin/env bash
# Static checks of the ops files (no Docker engine needed):
#   hadolint Dockerfile                                   Dockerfile lint
#   docker-compose config -q  (default and demo profile)  compose schema + interpolation
#   promtool check config                                 Prometheus config and its rule files
# The tools come from scripts/install-deps.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n----- %s -----\n' "$*"; }

# hadolint may sit in pip's script directory without being linked onto PATH.
if ! command -v hadolint >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1; then
    while IFS= read -r dir; do
        [ -n "$dir" ] && PATH="$PATH:$dir"
    done < <(python3 -c 'import site, sysconfig; print(sysconfig.get_path("scripts")); print(site.getuserbase() + "/bin")' 2>/dev/null || true)
fi

if command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    echo "check-ops: neither docker-compose nor 'docker compose' found; run scripts/install-deps.sh" >&2
    exit 1
fi

step "hadolint Dockerfile"
hadolint Dockerfile
echo "ok"

step "${compose[*]} -f docker-compose.yml config -q"
"${compose[@]}" -f docker-compose.yml config -q
echo "ok"

# Profiles came with compose 1.28 (Debian 12 ships 1.29). Read the help into a variable:
# `| grep -q` would end the pipe early and, under pipefail, fail on compose's SIGPIPE.
compose_help="$("${compose[@]}" --help 2>&1 || true)"
if [[ "$compose_help" == *--profile* ]]; then
    step "${compose[*]} -f docker-compose.yml --profile demo config -q"
    "${compose[@]}" -f docker-compose.yml --profile demo config -q
    echo "ok"
else
    step "${compose[*]} --profile demo: not supported by this compose version, skipped"
fi

step "promtool check config config/prometheus/prometheus.yml"
promtool check config config/prometheus/prometheus.yml
