#!/usr/bin/env bash
# Idempotent installer of the real client libraries the tests of the OpenAI-compatible API
# run (tests/api/clients.rs, through the scripts in tests/clients/):
#   .clients/venv                 python3 -m venv + pip install -r tests/clients/requirements.txt
#                                 (openai, langchain-openai and every dependency, pinned)
#   tests/clients/node_modules    npm ci from tests/clients/package-lock.json (openai, pinned)
# Both paths are gitignored. A stamp file holds a hash of requirements.txt, the lock file
# and the interpreters' versions: when nothing changed, a rerun only checks and prints.
# Needs python3 (with the venv module), node and npm on PATH; no root, nothing system-wide.
set -euo pipefail

log() { printf '%s\n' "$*"; }
die() { printf 'install-clients: %s\n' "$*" >&2; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
clients="$root/tests/clients"
venv="$root/.clients/venv"
stamp="$root/.clients/stamp"

for tool in python3 node npm; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH"
done

want="$(cat "$clients/requirements.txt" "$clients/package-lock.json" \
    <(python3 --version) <(node --version) | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && [ -x "$venv/bin/python" ] && [ -d "$clients/node_modules/openai" ]; then
    log "present:   client libraries (stamp $stamp unchanged)"
else
    rm -f "$stamp"
    mkdir -p "$root/.clients"
    if [ ! -x "$venv/bin/python" ]; then
        log "python:    python3 -m venv $venv"
        # Debian's python3 lacks ensurepip until python3-venv is installed.
        python3 -m venv "$venv" \
            || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    fi
    log "python:    pip install -r tests/clients/requirements.txt"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input -r "$clients/requirements.txt"
    log "node:      npm ci (tests/clients/node_modules)"
    npm ci --prefix "$clients" --no-audit --no-fund --loglevel=error >/dev/null
    printf '%s\n' "$want" >"$stamp"
fi

pyver() {
    "$venv/bin/python" -c 'import sys
from importlib.metadata import version
print(" ".join(f"{p}=={version(p)}" for p in sys.argv[1:]))' "$@"
}
log "installed: $(pyver openai langchain-openai langchain-core) ($("$venv/bin/python" --version))"
log "installed: openai@$(node -p 'require(process.argv[1]).version' \
    "$clients/node_modules/openai/package.json") (node $(node --version))"
