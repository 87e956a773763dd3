#!/usr/bin/env bash
# Static checks of the ops files (no Docker engine needed):
#   hadolint Dockerfile                                   Dockerfile lint
#   docker-compose config -q  (default, demo, replicas)   compose schema + interpolation
#   haproxy -c -f config/haproxy/haproxy.cfg              the replicas profile's load balancer
#   promtool check config                                 Prometheus config and its rule files
#   promtool check rules config/prometheus/rules/*.yml    rule syntax, PromQL, templates
#   promtool test rules config/prometheus/tests/*.yml     rule unit tests (every alert fires and stays quiet)
#   python3 -m json.tool config/grafana/dashboards/*.json dashboards are valid JSON
#   grafana provisioning                                  dashboards use the provisioned datasource uid
#   scripts/check-k8s.sh                                  deploy/kubernetes against the Kubernetes
#                                                         JSON schemas, offline (its own pinned venv)
# promtool and docker-compose come from scripts/install-deps.sh; hadolint is installed here,
# by scripts/install-hadolint.sh, and haproxy by `scripts/install-deps.sh haproxy` (both
# idempotent: nothing to do once they are there). The metric
# names of the rules and dashboards are checked against the live service by tests/ops.rs;
# scripts/prometheus-smoke.sh runs a real Prometheus on the rules against the running
# service.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n----- %s -----\n' "$*"; }

"./scripts/install-hadolint.sh"
"./scripts/install-deps.sh" haproxy
# Debian puts haproxy in /usr/sbin, which a normal user's PATH may lack.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac

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
    step "${compose[*]} -f docker-compose.yml --profile replicas config -q"
    "${compose[@]}" -f docker-compose.yml --profile replicas config -q
    echo "ok"
else
    step "${compose[*]} --profile demo / replicas: not supported by this compose version, skipped"
fi

# Debian 12's haproxy (2.6) checks the config that the compose file runs in haproxy:2.8-alpine
# (every keyword used there is in both). The replicas' names resolve only inside compose's
# network: that warning is expected; any other warning fails the check, like an error.
haproxy_version="$(haproxy -v 2>&1)"
step "haproxy -c -f config/haproxy/haproxy.cfg (${haproxy_version%%$'\n'*})"
haproxy_out="$(haproxy -c -f config/haproxy/haproxy.cfg 2>&1)" || { printf '%s\n' "$haproxy_out" >&2; exit 1; }
haproxy_warnings="$(grep -E 'WARNING|ALERT' <<<"$haproxy_out" | grep -v 'could not resolve address' || true)"
if [ -n "$haproxy_warnings" ]; then
    printf '%s\n' "$haproxy_warnings" >&2
    echo "check-ops: haproxy -c warned about config/haproxy/haproxy.cfg" >&2
    exit 1
fi
echo "ok"

step "promtool check config config/prometheus/prometheus.yml"
promtool check config config/prometheus/prometheus.yml
echo "ok"

# The globs must match something: an empty rules directory would pass silently.
shopt -s nullglob
rule_files=(config/prometheus/rules/*.yml)
rule_tests=(config/prometheus/tests/*.yml)
dashboards=(config/grafana/dashboards/*.json)
shopt -u nullglob
[ "${#rule_files[@]}" -gt 0 ] || { echo "check-ops: no rule files in config/prometheus/rules" >&2; exit 1; }
[ "${#rule_tests[@]}" -gt 0 ] || { echo "check-ops: no rule tests in config/prometheus/tests" >&2; exit 1; }
[ "${#dashboards[@]}" -gt 0 ] || { echo "check-ops: no dashboards in config/grafana/dashboards" >&2; exit 1; }

step "promtool check rules ${rule_files[*]}"
promtool check rules "${rule_files[@]}"

step "promtool test rules ${rule_tests[*]}"
promtool test rules "${rule_tests[@]}"

step "python3 -m json.tool ${dashboards[*]}"
for dashboard in "${dashboards[@]}"; do
    python3 -m json.tool "$dashboard" >/dev/null
    echo "ok: $dashboard"
done

step "grafana provisioning: dashboards use the provisioned datasource"
python3 - config/grafana/provisioning/datasources/prometheus.yml "${dashboards[@]}" <<'PY'
import json, re, sys
provisioning, dashboards = sys.argv[1], sys.argv[2:]
uids = re.findall(r"^\s*uid:\s*[\"']?([^\"'\s#]+)", open(provisioning).read(), re.M)
if len(uids) != 1:
    sys.exit(f"{provisioning}: expected one datasource uid, found {uids}")
uid = uids[0]
failed = False
for path in dashboards:
    bad = []
    def walk(v):
        if isinstance(v, dict):
            ds = v.get("datasource")
            if isinstance(ds, dict) and ds.get("type") != "grafana":
                if ds.get("type") != "prometheus" or ds.get("uid") != uid:
                    bad.append(ds)
            for c in v.values():
                walk(c)
        elif isinstance(v, list):
            for c in v:
                walk(c)
    walk(json.load(open(path)))
    if bad:
        print(f"{path}: datasources other than the provisioned uid {uid!r}: {bad}", file=sys.stderr)
        failed = True
    else:
        print(f"ok: {path} (datasource uid {uid})")
sys.exit(1 if failed else 0)
PY

step "scripts/check-k8s.sh (deploy/kubernetes, offline schema validation)"
bash scripts/check-k8s.sh

printf '\nall ops checks passed\n'
