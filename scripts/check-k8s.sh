#!/usr/bin/env bash
# Validates deploy/kubernetes offline, with no cluster (scripts/check-ops.sh runs it):
#   every manifest against the Kubernetes JSON schemas (strict: unknown fields are errors),
#   the ServiceMonitor against deploy/kubernetes/schemas/, kustomization.yaml against the
#   folder's files, the ConfigMap against config/*.toml, the references between objects
#   and the shutdown arithmetic. Details: scripts/check-k8s.py.
#
#   scripts/check-k8s.sh                    check
#   scripts/check-k8s.sh --write-configmap  rewrite deploy/kubernetes/configmap.yaml from config/
#   KUBE_VERSIONS="1.30 1.33" scripts/check-k8s.sh   other Kubernetes versions (default 1.28 1.37)
#
# Tools: kubernetes-validate and its dependencies, pinned in scripts/check-k8s.requirements.txt,
# in a venv of their own under .ops/venv (git-ignored). Idempotent: the venv is made and
# filled once; a rerun only checks a stamp (the requirements' hash) and validates.
# (`kubectl apply --dry-run=client` is no substitute: it needs an API server to map kinds,
# with or without --validate=false.)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=.ops/venv
requirements=scripts/check-k8s.requirements.txt
stamp="$venv/.check-k8s-requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

if ! { [ -x "$venv/bin/python" ] && "$venv/bin/python" -c '' 2>/dev/null; }; then
    # Absent, or broken (e.g. made by a Python that is gone): start again.
    rm -rf "$venv"
    echo "check-k8s: creating $venv"
    python3 -m venv "$venv" \
        || { echo "check-k8s: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "check-k8s: installing $requirements into $venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install --quiet -r "$requirements"
    printf '%s\n' "$want" >"$stamp"
fi

exec "$venv/bin/python" scripts/check-k8s.py "$@"
