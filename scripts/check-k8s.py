"""Offline checks of deploy/kubernetes, run by scripts/check-k8s.sh inside its venv.

    python scripts/check-k8s.py                    check (exit 1 on any failure)
    python scripts/check-k8s.py --write-configmap  rewrite configmap.yaml from config/*.toml

What is checked, with no cluster:
  - every manifest against the Kubernetes JSON schemas that kubernetes-validate bundles, in
    strict mode (unknown fields are errors), for each version in KUBE_VERSIONS; a kind with
    no bundled schema (a CRD: ServiceMonitor) against deploy/kubernetes/schemas/, and a kind
    with neither is an error, never a silent skip;
  - YAML that PyYAML would accept but Kubernetes tooling would misread: duplicate keys;
  - kustomization.yaml lists every manifest of the folder (and the resources it lists
    exist), but the *.example.yaml templates, which it must not list;
  - the ConfigMap holds config/default.toml and config/canned_answers.toml exactly;
  - the references between objects: the Service selects the pods and targets a named
    container port, the ServiceMonitor names a Service port, the HPA, the PDB and the
    NetworkPolicy point at the Deployment's pods, the Deployment mounts the ConfigMap and
    reads the Secret of secret.example.yaml;
  - terminationGracePeriodSeconds covers the preStop sleep plus server.shutdown_grace_secs.
"""

import json
import os
import re
import sys

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
K8S_DIR = os.path.join(ROOT, "deploy", "kubernetes")
SCHEMA_DIR = os.path.join(K8S_DIR, "schemas")
NAMESPACE = "resilient-qa"
# The oldest and the newest Kubernetes these manifests are meant for (kubernetes-validate
# bundles schemas for 1.25 to its own version). Override: KUBE_VERSIONS="1.30 1.33".
KUBE_VERSIONS = os.environ.get("KUBE_VERSIONS", "1.28 1.37").split()
CONFIG_FILES = {  # ConfigMap key -> repository file
    "default.toml": os.path.join(ROOT, "config", "default.toml"),
    "canned_answers.toml": os.path.join(ROOT, "config", "canned_answers.toml"),
}
CLUSTER_SCOPED = {"Namespace"}

failures = []


def fail(where, message):
    failures.append(f"{where}: {message}")
    print(f"FAIL {where}: {message}")


def ok(message):
    print(f"ok   {message}")


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_docs(path):
    rel = os.path.relpath(path, ROOT)
    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.load_all(f, Loader=StrictLoader) if d is not None]
    except yaml.YAMLError as e:
        fail(rel, f"not valid YAML: {e}")
        return []
    if not docs:
        fail(rel, "no object in the file")
    return docs


def manifest_files():
    names = sorted(
        n for n in os.listdir(K8S_DIR)
        if n.endswith((".yaml", ".yml")) and n != "kustomization.yaml"
        and os.path.isfile(os.path.join(K8S_DIR, n))
    )
    return names


# ---------------------------------------------------------------- schemas

def crd_schema(doc):
    """The vendored JSON schema of a kind kubernetes-validate has none for, or None."""
    group_version = doc.get("apiVersion", "")
    group = group_version.split("/")[0].split(".")[0] if "/" in group_version else "core"
    version = group_version.split("/")[-1]
    path = os.path.join(SCHEMA_DIR, f"{str(doc.get('kind', '')).lower()}-{group}-{version}.json")
    if not os.path.isfile(path):
        return None, path
    with open(path, encoding="utf-8") as f:
        return json.load(f), path


def validate_schema(rel, doc):
    ident = f"{rel} {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
    for key in ("apiVersion", "kind", "metadata"):
        if key not in doc:
            fail(ident, f"no {key}")
            return
    for version in KUBE_VERSIONS:
        try:
            got = kubernetes_validate.validate(doc, version, strict=True)
            ok(f"{ident}: Kubernetes {got} schema (strict)")
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            fail(ident, f"Kubernetes {e.version} schema: {path}: {e.message}")
        except SchemaNotFoundError:
            schema, schema_path = crd_schema(doc)
            if schema is None:
                fail(ident, f"no Kubernetes {version} schema for {doc['apiVersion']} "
                            f"{doc['kind']}, and no vendored {os.path.relpath(schema_path, ROOT)}")
                continue
            errors = sorted(
                jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path)
            )
            for e in errors:
                path = ".".join(str(p) for p in e.path) or "(top)"
                fail(ident, f"{os.path.relpath(schema_path, ROOT)}: {path}: {e.message}")
            if not errors:
                ok(f"{ident}: vendored schema {os.path.relpath(schema_path, ROOT)} (strict)")
            break  # a CRD's schema does not depend on the Kubernetes version


# ---------------------------------------------------------------- kustomization

def check_kustomization(files):
    rel = "deploy/kubernetes/kustomization.yaml"
    docs = load_docs(os.path.join(K8S_DIR, "kustomization.yaml"))
    if not docs:
        return
    kust = docs[0]
    if kust.get("kind") != "Kustomization":
        fail(rel, f"kind is {kust.get('kind')!r}, not Kustomization")
    if kust.get("namespace") != NAMESPACE:
        fail(rel, f"namespace is {kust.get('namespace')!r}, not {NAMESPACE!r}")
    resources = kust.get("resources") or []
    if len(set(resources)) != len(resources):
        fail(rel, "a resource is listed twice")
    for r in resources:
        if not os.path.isfile(os.path.join(K8S_DIR, r)):
            fail(rel, f"lists {r}, which does not exist")
    templates = [f for f in files if f.endswith((".example.yaml", ".example.yml"))]
    for f in files:
        if f in templates:
            if f in resources:
                fail(rel, f"lists the template {f}: an apply would overwrite the real object "
                          "with its placeholder values")
        elif f not in resources:
            fail(rel, f"does not list {f}")
    if not any(f for f in failures if f.startswith(rel)):
        ok(f"{rel}: lists all {len(files) - len(templates)} manifests; "
           f"leaves out the template(s) {', '.join(templates) or '(none)'}")


# ---------------------------------------------------------------- the ConfigMap

CONFIGMAP_HEAD = """\
# GENERATED by `scripts/check-k8s.sh --write-configmap` from config/default.toml and
# config/canned_answers.toml: edit those files, then rerun it (scripts/check-k8s.sh fails
# while this copy differs). Mounted at /app/config; settings that differ per cluster go in
# the Deployment's environment (QA__SECTION__KEY) or the Secret, not here.
apiVersion: v1
kind: ConfigMap
metadata:
  name: resilient-qa-config
  namespace: resilient-qa
  labels:
    app.kubernetes.io/name: resilient-qa
data:
"""


def write_configmap():
    out = [CONFIGMAP_HEAD]
    for key, path in CONFIG_FILES.items():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if not text.endswith("\n") or text.endswith("\n\n"):
            sys.exit(f"{path}: must end with exactly one newline to be kept exactly in YAML")
        out.append(f"  {key}: |\n")
        for line in text.splitlines():
            out.append(f"    {line}\n" if line else "\n")
    path = os.path.join(K8S_DIR, "configmap.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(out))
    print(f"wrote {os.path.relpath(path, ROOT)}")


def check_configmap(cm, rel):
    data = cm.get("data") or {}
    for key, path in CONFIG_FILES.items():
        with open(path, encoding="utf-8") as f:
            want = f.read()
        if data.get(key) != want:
            fail(rel, f"data[{key!r}] differs from {os.path.relpath(path, ROOT)}: "
                      "run scripts/check-k8s.sh --write-configmap")
        else:
            ok(f"{rel}: data[{key!r}] equals {os.path.relpath(path, ROOT)}")
    extra = set(data) - set(CONFIG_FILES)
    if extra:
        fail(rel, f"keys not taken from config/: {sorted(extra)}")


# ---------------------------------------------------------------- cross-references

def selects(selector, labels):
    match = (selector or {}).get("matchLabels") or selector or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def check_references(objects):
    by_kind = {}
    for rel, doc in objects:
        by_kind.setdefault(doc.get("kind"), []).append((rel, doc))

    def one(kind):
        found = by_kind.get(kind, [])
        if len(found) != 1:
            fail("deploy/kubernetes", f"expected one {kind}, found {len(found)}")
            return None, None
        return found[0]

    for rel, doc in objects:
        kind, meta = doc.get("kind"), doc.get("metadata") or {}
        if kind not in CLUSTER_SCOPED and meta.get("namespace") != NAMESPACE:
            fail(rel, f"{kind}/{meta.get('name')} is not in namespace {NAMESPACE}")

    dep_rel, dep = one("Deployment")
    svc_rel, svc = one("Service")
    cm_rel, cm = one("ConfigMap")
    sec_rel, sec = one("Secret")
    if not dep:
        return
    pod = dep["spec"]["template"]
    labels = pod["metadata"].get("labels") or {}
    if not selects(dep["spec"]["selector"], labels):
        fail(dep_rel, "spec.selector does not select the pod template's labels")
    containers = pod["spec"]["containers"]
    app = containers[0]
    ports = {p.get("name"): p["containerPort"] for p in app.get("ports", [])}

    if svc:
        if not selects(svc["spec"].get("selector"), labels):
            fail(svc_rel, "the Service's selector does not select the Deployment's pods")
        for p in svc["spec"]["ports"]:
            if isinstance(p.get("targetPort"), str) and p["targetPort"] not in ports:
                fail(svc_rel, f"targetPort {p['targetPort']!r} is no named container port")
        svc_ports = {p.get("name") for p in svc["spec"]["ports"]}
        for rel, sm in by_kind.get("ServiceMonitor", []):
            if not selects(sm["spec"]["selector"], svc["metadata"].get("labels") or {}):
                fail(rel, "the ServiceMonitor's selector does not select the Service's labels")
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in svc_ports:
                    fail(rel, f"endpoint port {ep.get('port')!r} is no named Service port")

    for rel, hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref.get("kind"), ref.get("name")) != ("Deployment", dep["metadata"]["name"]):
            fail(rel, f"scaleTargetRef {ref} is not the Deployment")
        if dep["spec"].get("replicas", 1) < hpa["spec"].get("minReplicas", 1):
            fail(dep_rel, "replicas is below the HPA's minReplicas")
        if not all("cpu" in (c.get("resources") or {}).get("requests", {}) for c in containers):
            fail(dep_rel, "a container has no CPU request: the HPA's utilization needs one")
    for rel, pdb in by_kind.get("PodDisruptionBudget", []):
        if not selects(pdb["spec"]["selector"], labels):
            fail(rel, "the PDB's selector does not select the Deployment's pods")
    for rel, np in by_kind.get("NetworkPolicy", []):
        if not selects(np["spec"]["podSelector"], labels):
            fail(rel, "the NetworkPolicy's podSelector does not select the Deployment's pods")
        for rule in np["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                if p.get("port") not in set(ports.values()) | set(ports):
                    fail(rel, f"ingress port {p.get('port')!r} is no container port")

    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    if cm:
        cm_volumes = [v for v in volumes.values()
                      if (v.get("configMap") or {}).get("name") == cm["metadata"]["name"]]
        if not cm_volumes:
            fail(dep_rel, f"no volume of the ConfigMap {cm['metadata']['name']}")
        mounts = {m["name"]: m["mountPath"] for m in app.get("volumeMounts", [])}
        for v in cm_volumes:
            if mounts.get(v["name"]) != "/app/config":
                fail(dep_rel, f"the ConfigMap is mounted at {mounts.get(v['name'])}, not /app/config")
    if sec:
        refs = [e["secretRef"]["name"] for e in app.get("envFrom", []) if "secretRef" in e]
        if sec["metadata"]["name"] not in refs:
            fail(dep_rel, f"does not read the Secret {sec['metadata']['name']} ({sec_rel})")

    # Shutdown: the kubelet counts the preStop hook inside the grace period.
    env = {e["name"]: e.get("value") for e in app.get("env", [])}
    grace = 30
    if cm and "default.toml" in (cm.get("data") or {}):
        # The [server] table's key (a regex, not tomllib: Python 3.11+ only).
        server = re.search(r"^\[server\]\s*$(.*?)(?=^\[)", cm["data"]["default.toml"], re.M | re.S)
        key = server and re.search(r"^shutdown_grace_secs\s*=\s*(\d+)", server.group(1), re.M)
        if key:
            grace = int(key.group(1))
    if env.get("QA__SERVER__SHUTDOWN_GRACE_SECS"):
        grace = int(env["QA__SERVER__SHUTDOWN_GRACE_SECS"])
    pre_stop = ((app.get("lifecycle") or {}).get("preStop") or {})
    sleep = 0
    if "exec" in pre_stop:
        cmd = pre_stop["exec"]["command"]
        if os.path.basename(cmd[0]) == "sleep":
            sleep = int(cmd[1])
    elif "sleep" in pre_stop:
        sleep = int(pre_stop["sleep"]["seconds"])
    if sleep == 0:
        fail(dep_rel, "no preStop sleep: the drain would start before the pod leaves the endpoints")
    period = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if period <= sleep + grace:
        fail(dep_rel, f"terminationGracePeriodSeconds {period} <= preStop {sleep} s + "
                      f"shutdown_grace_secs {grace} s: SIGKILL could cut the drain")
    else:
        ok(f"{dep_rel}: terminationGracePeriodSeconds {period} = preStop {sleep} + "
           f"shutdown_grace_secs {grace} + {period - sleep - grace} s margin")


def main():
    if sys.argv[1:] == ["--write-configmap"]:
        write_configmap()
        return 0
    if sys.argv[1:]:
        sys.exit("usage: check-k8s.py [--write-configmap]")
    print(f"kubernetes-validate {kubernetes_validate.__version__}, "
          f"Kubernetes versions {' '.join(KUBE_VERSIONS)}")
    files = manifest_files()
    objects = []
    for name in files:
        path = os.path.join(K8S_DIR, name)
        rel = os.path.relpath(path, ROOT)
        for doc in load_docs(path):
            if not isinstance(doc, dict):
                fail(rel, "a document that is not a mapping")
                continue
            validate_schema(rel, doc)
            objects.append((rel, doc))
    check_kustomization(files)
    for rel, doc in objects:
        if doc.get("kind") == "ConfigMap":
            check_configmap(doc, rel)
    if objects:
        try:
            check_references(objects)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            fail("deploy/kubernetes", f"references could not be checked: {type(e).__name__}: {e}")
    if failures:
        print(f"\ncheck-k8s: {len(failures)} failure(s)", file=sys.stderr)
        return 1
    print(f"\ncheck-k8s: {len(objects)} objects in {len(files)} files passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
