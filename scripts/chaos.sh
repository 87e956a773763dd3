#!/usr/bin/env bash
# Chaos suite: builds the release binaries, then runs examples/chaos.rs, which starts a
# private redis-server, upstream-sim and resilient-qa per scenario on free 127.0.0.1
# ports, drives 50 looping clients (streaming ones in stream_cut and stream_hang),
# injects one fault at a time and writes docs/CHAOS.md. replica_killed runs three
# resilient-qa behind HAProxy (installed here by scripts/install-deps.sh haproxy when
# missing); redis_failover runs a Redis primary, a replica and three sentinels.
#
#   scripts/chaos.sh                         # every scenario (about 3.5 minutes + the build)
#   scripts/chaos.sh --quick                 # shorter phases
#   scripts/chaos.sh --scenario primary_down # one scenario (repeatable, or a,b,c)
#
# Exit code: 0 every check passed, 1 a check failed, 2 bad usage or setup.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo "chaos: redis-server not found on PATH; run scripts/install-deps.sh" >&2
    exit 2
fi

# HAProxy (Debian's, in /usr/sbin) for replica_killed, which every run but one naming
# only other scenarios needs. The installer is idempotent; if it cannot install,
# replica_killed fails and says how to install it.
case " $* " in
    *replica_killed*) need_haproxy=true ;;
    *--scenario*) need_haproxy=false ;;
    *) need_haproxy=true ;;
esac
if $need_haproxy && ! PATH="$PATH:/usr/sbin:/usr/local/sbin" command -v haproxy >/dev/null 2>&1; then
    scripts/install-deps.sh haproxy || echo "chaos: could not install haproxy (scripts/install-deps.sh haproxy)" >&2
fi

cargo build --release --bins
cargo build --release --example chaos
export CHAOS_COMMAND="scripts/chaos.sh${*:+ $*}"
exec cargo run --quiet --release --example chaos -- "$@"
