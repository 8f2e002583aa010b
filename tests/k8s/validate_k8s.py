"""Checks of the Kubernetes deliverables, run by scripts/validate-k8s.sh inside its venv.

Owns: (a) kubernetes-validate --strict on examples/kubernetes; (b) lint of the Helm chart with
helm-sdkpy and helm-python-sdk, offline renders of the chart (the install command's values, a
variant, persistence off, etcd v3, the community chart's values), kubernetes-validate --strict on
the renders; (c) checks that the documented install command's keys reach the rendered manifests,
that each component's Role is exactly the list next to the code (crates/stolon-kube/rbac.json),
the restricted Pod Security profile, PodDisruptionBudgets, anti-affinity, the values schema, the
community chart's keys, the password policy and the never-overwriting init Job; (d) the render
snapshot tests/k8s/rendered/kubernetes-store.json, from which the stolon-it chart test takes the
components' command lines, is up to date (`--update` rewrites it); and hadolint on the Dockerfile.

helm-sdkpy (0.1.32) exposes lint, package, show and the cluster actions (install, upgrade, ...)
but no template/dry-run entry point: its install always talks to an API server. Rendering is
therefore done with helm-python-sdk (Chart.render, Helm's own engine, offline; `lookup` returns
nothing), which also parses `--set` strings exactly as helm does.

Prints one line per check ("ok   ..." or "FAIL ...: why") and a closing "N passed, N failed".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

# The command users run (from the chart directory, Helm 3); its keys must all be honoured.
INSTALL_COMMAND = (
    "helm install stolon . --namespace test --create-namespace --set store.backend=kubernetes "
    "--set persistence.enabled=true --set persistence.storageClassName=defaultScName"
)

# What every offline render adds: `lookup` sees nothing here, and the chart refuses to generate
# passwords it cannot keep (the GitOps path: a Secret made outside the chart).
OFFLINE = "existingSecret=stolon-passwords"

# The snapshot the stolon-it chart test runs: the install command's values, offline.
SNAPSHOT = Path("tests/k8s/rendered/kubernetes-store.json")

# Keys of the community chart with another spelling or meaning here, and what they must render.
COMMUNITY_SETS = [
    "nameOverride=pg",
    "keeper.nameOverride=db",
    "sentinel.nameOverride=sen",
    "proxy.nameOverride=px",
    "slow_queries.enabled=true",
    "slow_queries.min_duration=250",
    "ports.internalPort=6432",
    "ports.externalPort=7432",
    "proxy.serviceType=NodePort",
    "proxy.listenAddress=::",
    "keeper.uid_prefix=pgnode",
    "persistence.accessMode=ReadWriteOncePod",
    "keeper.client_ssl.enabled=true",
    "keeper.client_ssl.certs_secret_name=pg-cert-secret",
]

# Restricted Pod Security Standard, per container and pod.
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

# A second set of values exercising the other branches of every template.
VARIANT_SETS = [
    "store.backend=etcdv3",
    "store.endpoints=http://etcd-0.etcd:2379\\,http://etcd-1.etcd:2379",
    "persistence.enabled=false",
    "proxy.readOnly.enabled=true",
    "keeper.client_ssl.enabled=true",
    "keeper.client_ssl.certs_secret_name=stolon-tls",
    "keeper.client_ssl.caFile=ca.crt",
    "keeper.client_ssl.certFile=tls.crt",
    "keeper.client_ssl.keyFile=tls.key",
    "clusterSpec.sleepInterval=2s",
    "clusterSpec.pgParameters.max_connections=200",
    "keeper.replicas=3",
    "sentinel.replicas=3",
    "proxy.replicas=3",
    "image=registry.example/stolon-rs",
    "imageTag=v9",
    "pgSuperuserName=admin",
    "pgReplUsername=replicator",
    "clusterName=kube-stolon",
    "keeper.resources.requests.cpu=250m",
    "nodeSelector.disktype=ssd",
]

# Values that must make rendering fail, with a fragment of the expected message (each with
# OFFLINE added, except the first).
BAD_SETS = [
    ("store.backend=kubernetes", "Set existingSecret"),
    ("store.backend=consul", "store.backend must be kubernetes or etcdv3"),
    ("store.backend=etcdv3", "store.endpoints is required"),
    ("keeper.client_ssl.enabled=true", "certs_secret_name"),
    ("keeper.serviceType=NodePort", "proxy.readOnly.enabled=true"),
    ("initJob.force=true", "only ever creates cluster data that is absent"),
    ("keeper.replicsa=3", "additional properties 'replicsa' not allowed"),
    ("persistance.enabled=true", "additional properties 'persistance' not allowed"),
    ("podAntiAffinity=sometimes", "podAntiAffinity"),
]

KUBE_FLAGS = ["--store-backend=kubernetes", "--kube-resource-kind=configmap"]
COMPONENTS = ["stolon-keeper", "stolon-sentinel", "stolon-proxy"]


class Checks:
    """Runs named checks, printing one line each and counting the outcome."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def run(self, name: str, fn: Callable[[], str | None]) -> Any:
        try:
            detail = fn()
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            msg = " ".join(str(e).split())
            print(f"FAIL {name}: {type(e).__name__}: {msg[:600]}", flush=True)
            self.failed += 1
            return None
        print(f"ok   {name}" + (f" ({detail})" if detail else ""), flush=True)
        self.passed += 1
        return detail


def fail(msg: str) -> None:
    raise AssertionError(msg)


def expect(cond: bool, msg: str) -> None:
    if not cond:
        fail(msg)


def kubernetes_validate(venv_bin: Path, path: Path) -> str:
    """Runs `kubernetes-validate --strict` on one file; returns a short summary."""
    exe = venv_bin / "kubernetes-validate"
    proc = subprocess.run(
        [str(exe), "--strict", str(path)], capture_output=True, text=True, timeout=300
    )
    out = (proc.stdout + proc.stderr).strip()
    bad = [line for line in out.splitlines() if not line.startswith("INFO")]
    if proc.returncode != 0 or bad:
        fail("; ".join(bad or out.splitlines())[:600] or f"exit {proc.returncode}")
    n = sum(1 for line in out.splitlines() if " passed for resource " in line)
    if n == 0:
        fail("no resource validated")
    return f"{n} resources"


def parse_install_command(cmd: str) -> tuple[str, str, str]:
    """Returns (release name, namespace, comma-joined --set expression) of a Helm 3
    `helm install NAME CHART` command."""
    words = shlex.split(cmd)
    name = namespace = ""
    sets: list[str] = []
    positional: list[str] = []
    i = 2 if words[:2] == ["helm", "install"] else len(words)
    while i < len(words):
        w = words[i]
        if w in ("--namespace", "-n"):
            namespace, i = words[i + 1], i + 2
        elif w == "--set":
            sets.append(words[i + 1])
            i += 2
        elif w.startswith("-"):
            i += 1
        else:
            positional.append(w)
            i += 1
    if len(positional) == 2:
        name = positional[0]
    expect(bool(name and namespace and sets), f"cannot parse the install command: {cmd}")
    return name, namespace, ",".join(sets)


def docs_of(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for d in yaml.safe_load_all(rendered[path]):
            if isinstance(d, dict):
                docs.append(d)
    return docs


def write_render(rendered: dict[str, str], dest: Path) -> Path:
    parts = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt") or not rendered[path].strip():
            continue
        parts.append(f"---\n# Source: {path}\n{rendered[path].strip()}\n")
    dest.write_text("".join(parts))
    return dest


def find(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> list[dict[str, Any]]:
    out = []
    for d in docs:
        if d.get("kind") != kind:
            continue
        labels = d.get("metadata", {}).get("labels", {}) or {}
        if component is None or labels.get("component") == component:
            out.append(d)
    return out


def one(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, component)
    expect(len(found) == 1, f"expected one {kind} {component or ''}, found {len(found)}")
    return found[0]


def container(d: dict[str, Any]) -> dict[str, Any]:
    return d["spec"]["template"]["spec"]["containers"][0]


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        "stolon-keeper": one(docs, "StatefulSet", "stolon-keeper"),
        "stolon-sentinel": one(docs, "Deployment", "stolon-sentinel"),
        "stolon-proxy": one(docs, "Deployment", "stolon-proxy"),
        "stolonctl": one(docs, "Job", "stolonctl"),
    }


def spec_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cms = [d for d in find(docs, "ConfigMap") if "cluster-spec.json" in (d.get("data") or {})]
    expect(len(cms) == 1, "no ConfigMap with cluster-spec.json")
    return json.loads(cms[0]["data"]["cluster-spec.json"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--update", action="store_true", help=f"rewrite {SNAPSHOT}")
    args = ap.parse_args()
    repo: Path = args.repo
    work: Path = args.work
    chart_dir = repo / "deploy" / "helm" / "stolon"
    examples = repo / "examples" / "kubernetes"
    venv_bin = Path(sys.executable).parent
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    c = Checks()

    # (a) plain manifests.
    files = sorted(p for p in examples.glob("*") if p.suffix in (".yaml", ".yml"))
    c.run(
        f"examples/kubernetes has manifests ({len(files)} files)",
        lambda: expect(len(files) > 0, f"no *.yaml in {examples}"),
    )
    for f in files:
        c.run(
            f"kubernetes-validate --strict examples/kubernetes/{f.name}",
            lambda f=f: kubernetes_validate(venv_bin, f),
        )

    # The container image's Dockerfile (docker itself cannot run here).
    def hadolint() -> str:
        proc = subprocess.run(
            [str(venv_bin / "hadolint"), "--no-color", str(repo / "Dockerfile")],
            capture_output=True, text=True, timeout=120,
        )
        expect(proc.returncode == 0, (proc.stdout + proc.stderr).strip().replace("\n", "; ")[:600])
        return "no findings"

    c.run("hadolint Dockerfile", hadolint)

    # (b) chart: lint with helm-sdkpy, render with helm-python-sdk.
    import helm_python
    import helm_sdkpy
    from helm_python.chart import Chart
    from helm_python.chart import lint as hp_lint

    release, namespace, install_sets = parse_install_command(INSTALL_COMMAND)
    origin_values = helm_python.parse_set_string(install_sets)
    install_values = helm_python.parse_set_string(f"{install_sets},{OFFLINE}")
    default_values = helm_python.parse_set_string(OFFLINE)
    variant_values = helm_python.parse_set_string(",".join(VARIANT_SETS + [OFFLINE]))
    nopersist_values = helm_python.parse_set_string(f"persistence.enabled=false,{OFFLINE}")
    community_values = yaml.safe_load((repo / "tests" / "k8s" / "community-values.yaml").read_text())
    community_values["existingSecret"] = "stolon-passwords"
    community_key_values = helm_python.parse_set_string(",".join(COMMUNITY_SETS + [OFFLINE]))
    password_values = helm_python.parse_set_string(
        f"{install_sets},pgSuperuserPassword=su-secret-value,pgReplPassword=repl-secret-value"
    )

    def sdkpy_lint(path: Path) -> str:
        # helm-sdkpy's Lint takes no values; severities 1 info, 2 warning, 3 error. Its
        # messages come back as empty objects, so the text is taken from helm-python-sdk below.
        cfg = helm_sdkpy.Configuration(namespace=namespace)
        report = asyncio.run(helm_sdkpy.Lint(cfg).run(str(path)))
        msgs = report.get("Messages") or []
        worst = max((m.get("Severity", 0) for m in msgs), default=0)
        errs = [e for e in (report.get("Errors") or [])]
        expect(worst < 2 and not errs, f"lint: {len(errs)} errors, worst severity {worst}: {msgs}")
        return f"{report.get('TotalChartsLinted')} chart, {len(msgs)} info messages"

    def values_copy(values: dict[str, Any], name: str) -> Path:
        # The chart with its values.yaml replaced by the coalesced values, so that helm-sdkpy
        # lints exactly what an install with these --set values would use.
        dest = work / name / "stolon"
        shutil.copytree(chart_dir, dest)
        with Chart.load(chart_dir) as ch:
            merged = ch.merge_values(values)
        (dest / "values.yaml").write_text(yaml.safe_dump(merged, sort_keys=True))
        return dest

    def hp_lint_check(values: dict[str, Any] | None) -> str:
        report = hp_lint(chart_dir, values, strict=True, namespace=namespace)
        bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        expect(not bad and not report.get("errors"), f"{bad} {report.get('errors')}")
        return f"{len(report.get('messages', []))} info messages"

    c.run(
        f"helm-sdkpy lint deploy/helm/stolon (--set {OFFLINE})",
        lambda: sdkpy_lint(values_copy(default_values, "lint-default")),
    )
    c.run(
        f"helm-sdkpy lint deploy/helm/stolon (--set {install_sets})",
        lambda: sdkpy_lint(values_copy(install_values, "lint-install")),
    )
    c.run(
        "helm-sdkpy lint deploy/helm/stolon (variant: etcdv3, emptyDir, read-only, client_ssl)",
        lambda: sdkpy_lint(values_copy(variant_values, "lint-variant")),
    )
    c.run("helm-python-sdk lint --strict (default values)", lambda: hp_lint_check(default_values))
    c.run("helm-python-sdk lint --strict (install values)", lambda: hp_lint_check(install_values))

    def render(values: dict[str, Any] | None) -> dict[str, str]:
        with Chart.load(chart_dir) as ch:
            return ch.render(values=values, name=release, namespace=namespace, is_install=True)

    renders: dict[str, list[dict[str, Any]]] = {}
    for label, values in (
        ("default", default_values),
        ("install", install_values),
        ("variant", variant_values),
        ("persistence-off", nopersist_values),
        ("community", community_values),
        ("community-keys", community_key_values),
        ("passwords", password_values),
    ):
        def do_render(label: str = label, values: dict[str, Any] | None = values) -> str:
            rendered = render(values)
            path = write_render(rendered, work / f"render-{label}.yaml")
            renders[label] = docs_of(rendered)
            expect(len(renders[label]) > 0, "nothing rendered")
            return f"{len(renders[label])} objects -> {path}"

        ok = c.run(f"helm template ({label} values) renders", do_render)
        if ok:
            c.run(
                f"kubernetes-validate --strict on the {label} render",
                lambda label=label: kubernetes_validate(venv_bin, work / f"render-{label}.yaml"),
            )

    for n, (bad_set, fragment) in enumerate(BAD_SETS):
        def refused(bad_set: str = bad_set, fragment: str = fragment, n: int = n) -> str:
            try:
                render(helm_python.parse_set_string(bad_set if n == 0 else f"{bad_set},{OFFLINE}"))
            except Exception as e:  # noqa: BLE001
                expect(fragment in str(e), f"refused, but without '{fragment}': {e}")
                return "refused with a clear message"
            fail("rendered although the values cannot work")
            return ""

        c.run(f"helm template refuses --set {bad_set}", refused)

    # (c) the install command's keys in the install render.
    inst = renders.get("install")
    dflt = renders.get("default")
    var = renders.get("variant")
    if any(renders.get(label) is None for label in (
        "default", "install", "variant", "persistence-off", "community", "community-keys", "passwords"
    )):
        c.run("rendered manifests available for the key checks", lambda: fail("a render failed"))
        return finish(c)

    def namespaces() -> str:
        wrong = [
            f"{d['kind']}/{d['metadata']['name']}"
            for d in inst
            if d.get("metadata", {}).get("namespace") != namespace
        ]
        expect(not wrong, f"not in namespace {namespace}: {wrong}")
        return f"{len(inst)} objects"

    c.run(f"--namespace {namespace}: every object in namespace {namespace}", namespaces)

    def release_names() -> str:
        svc = [d["metadata"]["name"] for d in find(inst, "Service", "stolon-proxy")]
        expect(f"{release}-proxy" in svc, f"proxy Service names {svc}")
        return f"proxy service {release}-proxy.{namespace}.svc"

    c.run(f"release name {release}: objects named after the release", release_names)

    def storage_class() -> str:
        sts = one(inst, "StatefulSet", "stolon-keeper")
        vcts = sts["spec"].get("volumeClaimTemplates") or []
        expect(len(vcts) == 1, f"persistence.enabled=true but {len(vcts)} volumeClaimTemplates")
        vct = vcts[0]
        expect(vct["metadata"]["name"] == "data", "claim template not named data")
        sc = vct["spec"].get("storageClassName")
        expect(sc == "defaultScName", f"storageClassName is {sc!r}")
        vols = sts["spec"]["template"]["spec"].get("volumes") or []
        expect(not [v for v in vols if v["name"] == "data"], "a pod volume shadows the claim 'data'")
        mounts = [m["mountPath"] for m in container(sts)["volumeMounts"] if m["name"] == "data"]
        expect(mounts == ["/stolon-data"], f"data mounted at {mounts}")
        expect("--data-dir=/stolon-data" in container(sts)["args"], "keeper --data-dir is not the claim")
        # The default render has no storageClassName: the value, not a constant, put it there.
        d_vct = one(dflt, "StatefulSet", "stolon-keeper")["spec"]["volumeClaimTemplates"][0]
        expect("storageClassName" not in d_vct["spec"], "default render already sets storageClassName")
        return "volumeClaimTemplates[data].spec.storageClassName=defaultScName"

    c.run("--set persistence.enabled=true + persistence.storageClassName=defaultScName", storage_class)

    def kube_backend() -> str:
        for comp, d in workloads(inst).items():
            a = container(d)["args"]
            for flag in KUBE_FLAGS:
                expect(flag in a, f"{comp} lacks {flag}: {a}")
            expect(not [x for x in a if x.startswith("--store-endpoints")], f"{comp} has --store-endpoints")
        return "keeper, sentinel, proxy, stolonctl: " + " ".join(KUBE_FLAGS)

    c.run("--set store.backend=kubernetes", kube_backend)

    def discovery_labels() -> str:
        for comp in COMPONENTS:
            d = workloads(inst)[comp]
            labels = d["spec"]["template"]["metadata"]["labels"]
            expect(labels.get("component") == comp, f"{comp} pod label component={labels.get('component')}")
            expect(labels.get("stolon-cluster") == release, f"{comp} pod label stolon-cluster={labels.get('stolon-cluster')}")
            env = {e["name"]: e for e in container(d).get("env", [])}
            ref = env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            expect(ref == "metadata.name", f"{comp} POD_NAME not from the downward API")
        return "component, stolon-cluster labels and POD_NAME on keeper, sentinel, proxy"

    c.run("kubernetes store discovery labels and POD_NAME", discovery_labels)

    def keeper_uid_and_secrets() -> str:
        sts = one(inst, "StatefulSet", "stolon-keeper")
        k = container(sts)
        script = " ".join(k["command"])
        expect('STKEEPER_UID="keeper${POD_NAME##*-}"' in script, f"keeper UID not from the ordinal: {script}")
        a = k["args"]
        for flag in ("--pg-su-passwordfile=/etc/secrets/stolon/pg_su_password",
                     "--pg-repl-passwordfile=/etc/secrets/stolon/pg_repl_password"):
            expect(flag in a, f"keeper lacks {flag}")
        expect(not find(inst, "Secret"), "a Secret rendered although existingSecret is set")
        vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
        expect(vols["passwords"]["secret"]["secretName"] == "stolon-passwords", "passwords volume ignores existingSecret")
        # Explicit passwords: in the Secret, nowhere else.
        pw = renders["passwords"]
        secret = one(pw, "Secret")
        import base64
        data = {k2: base64.b64decode(v).decode() for k2, v in secret["data"].items()}
        expect(data["pg_su_password"] == "su-secret-value" and data["pg_repl_password"] == "repl-secret-value",
               "explicit passwords not used")
        everything = json.dumps([container(d) for d in workloads(pw).values()])
        expect("secret-value" not in everything, "a password shows up in a pod spec")
        expect(not [x for x in a if x.startswith(("--pg-su-password=", "--pg-repl-password="))], "password in args")
        pvols = {v["name"]: v for v in one(pw, "StatefulSet", "stolon-keeper")["spec"]["template"]["spec"]["volumes"]}
        expect(pvols["passwords"]["secret"]["secretName"] == secret["metadata"]["name"], "passwords volume")
        return "keeper<ordinal> UIDs; passwords as files from existingSecret or the chart's Secret"

    c.run("keeper UID from the ordinal, passwords only as files", keeper_uid_and_secrets)

    rbac_list = json.loads((repo / "crates" / "stolon-kube" / "rbac.json").read_text())

    def expected_rules(docs: list[dict[str, Any]], comp: str, cluster: str, keeper_sts: dict[str, Any]) -> list[Any]:
        n = keeper_sts["spec"]["replicas"]
        names = {
            "cluster": [f"stolon-cluster-{cluster}"],
            "keeper-pods": [f"{keeper_sts['metadata']['name']}-{i}" for i in range(n)],
        }
        out = []
        for r in rbac_list[comp]:
            rule = {"apiGroups": [r["apiGroup"]], "resources": [r["resource"]], "verbs": sorted(r["verbs"])}
            if "names" in r:
                rule["resourceNames"] = names[r["names"]]
            out.append(rule)
        return sorted(out, key=lambda r: json.dumps(r, sort_keys=True))

    def rbac_exact(label: str) -> str:
        docs = renders[label]
        keeper_sts = one(docs, "StatefulSet", "stolon-keeper")
        cluster = keeper_sts["spec"]["template"]["metadata"]["labels"]["stolon-cluster"]
        comp_label = {"keeper": "stolon-keeper", "sentinel": "stolon-sentinel", "proxy": "stolon-proxy", "init": "stolonctl"}
        w = workloads(docs)
        for comp, lbl in comp_label.items():
            role = one(docs, "Role", lbl)
            got = sorted(({**r, "verbs": sorted(r["verbs"])} for r in role["rules"]), key=lambda r: json.dumps(r, sort_keys=True))
            want = expected_rules(docs, comp, cluster, keeper_sts)
            expect(got == want, f"{comp} Role is not crates/stolon-kube/rbac.json: {got} != {want}")
            binding = one(docs, "RoleBinding", lbl)
            sa = one(docs, "ServiceAccount", lbl)["metadata"]["name"]
            expect(binding["roleRef"]["name"] == role["metadata"]["name"], f"{comp} binding")
            expect([s2["name"] for s2 in binding["subjects"]] == [sa], f"{comp} binding subjects")
            wl = w["stolon-keeper" if comp == "keeper" else "stolonctl" if comp == "init" else lbl]
            expect(wl["spec"]["template"]["spec"]["serviceAccountName"] == sa, f"{comp} pod uses another ServiceAccount")
        expect(len(find(docs, "Role")) == 4 and len(find(docs, "ServiceAccount")) == 4, "one Role and ServiceAccount per component")
        return "keeper, sentinel, proxy, init: one ServiceAccount each, Role == rbac.json"

    for label in ("install", "community-keys"):
        c.run(f"RBAC exactly what the code calls ({label} render)", lambda label=label: rbac_exact(label))

    def restricted(label: str) -> str:
        n = 0
        for comp, d in workloads(renders[label]).items():
            pod = d["spec"]["template"]["spec"]
            psc = pod.get("securityContext") or {}
            expect(psc.get("runAsNonRoot") is True, f"{comp} pod runAsNonRoot")
            expect(psc.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{comp} pod seccompProfile")
            expect(not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), f"{comp} host namespaces")
            for ctr in pod["containers"] + pod.get("initContainers", []):
                sc = ctr.get("securityContext") or {}
                for key, want in RESTRICTED_CONTAINER.items():
                    expect(sc.get(key) == want, f"{comp}/{ctr['name']} securityContext.{key}={sc.get(key)!r}")
                expect(not sc.get("privileged"), f"{comp} privileged")
                n += 1
            vol_kinds = {k for v in pod.get("volumes", []) for k in v if k != "name"}
            expect(vol_kinds <= {"emptyDir", "secret", "configMap", "persistentVolumeClaim", "projected"},
                   f"{comp} volume kinds {vol_kinds}")
            mounts = {m["mountPath"] for ctr in pod["containers"] for m in ctr.get("volumeMounts", [])}
            expect("/tmp" in mounts, f"{comp}: read-only root filesystem without a writable /tmp")
        return f"{n} containers: non-root, RuntimeDefault seccomp, no escalation, caps dropped, read-only root"

    for label in ("install", "variant", "community"):
        c.run(f"restricted Pod Security profile ({label} render)", lambda label=label: restricted(label))

    def availability(label: str) -> str:
        docs = renders[label]
        for comp in COMPONENTS:
            pdb = one(docs, "PodDisruptionBudget", comp)
            sel = pdb["spec"]["selector"]["matchLabels"]
            wl = workloads(docs)[comp]
            expect(sel == wl["spec"]["selector"]["matchLabels"], f"{comp} PDB selects {sel}")
            expect(pdb["spec"].get("maxUnavailable") == 1, f"{comp} PDB {pdb['spec']}")
            pod = wl["spec"]["template"]["spec"]
            anti = pod.get("affinity", {}).get("podAntiAffinity", {})
            terms = anti.get("preferredDuringSchedulingIgnoredDuringExecution") or []
            expect(terms and terms[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
                   and terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == sel,
                   f"{comp} has no preferred anti-affinity on the node: {anti}")
            spread = pod.get("topologySpreadConstraints") or []
            expect(spread and spread[0]["labelSelector"]["matchLabels"] == sel, f"{comp} topology spread")
            ctr = container(wl)
            expect(ctr.get("resources", {}).get("requests"), f"{comp} has no resource requests")
            expect("livenessProbe" in ctr, f"{comp} has no liveness probe")
        k = container(workloads(docs)["stolon-keeper"])
        expect(k["livenessProbe"].get("tcpSocket", {}).get("port") == "metrics", "keeper liveness is not the keeper process")
        expect("pg_isready" in " ".join(k["readinessProbe"]["exec"]["command"]), "keeper readiness is not pg_isready")
        p = container(workloads(docs)["stolon-proxy"])
        expect(p["readinessProbe"].get("httpGet", {}).get("path") == "/health", "proxy readiness is not /health")
        return "PDBs (maxUnavailable 1), preferred anti-affinity, zone spread, requests, probes"

    for label in ("install", "community"):
        c.run(f"PodDisruptionBudgets, anti-affinity, requests, probes ({label} render)", lambda label=label: availability(label))

    def init_job() -> str:
        job = one(inst, "Job", "stolonctl")
        expect(job["metadata"]["annotations"].get("helm.sh/hook") == "post-install", "init Job is not a post-install hook")
        ctr = container(job)
        line = ctr["command"] + ctr["args"]
        expect(line[0] == "stolonctl" and "init" in line and "--if-absent" in line, f"init Job runs {line}")
        expect("-y" not in line and "--yes" not in line, "init Job would overwrite")
        services = [d["metadata"]["name"] for d in find(inst, "Service")]
        expect(f"{release}-proxy-ro" not in services,
               "read-only Service rendered although proxy.readOnly.enabled is false")
        p = container(one(inst, "Deployment", "stolon-proxy"))
        expect(not [x for x in p["args"] if x.startswith("--read-only-port")], "--read-only-port on by default")
        return "post-install stolonctl init --if-absent; no read-only service"

    c.run("init Job never overwrites, read-only port off by default", init_job)

    def community_keys() -> str:
        docs = renders["community-keys"]
        w = workloads(docs)
        names = {comp: w[comp]["metadata"]["name"] for comp in COMPONENTS}
        expect(names == {"stolon-keeper": f"{release}-pg-db", "stolon-sentinel": f"{release}-pg-sen",
                         "stolon-proxy": f"{release}-pg-px"}, f"nameOverride: {names}")
        k, p = container(w["stolon-keeper"]), container(w["stolon-proxy"])
        expect("--pg-port=6432" in k["args"] and "--port=6432" in p["args"], "ports.internalPort")
        expect("--listen-address=::" in p["args"], "proxy.listenAddress")
        svc = one(docs, "Service", "stolon-proxy")
        expect(svc["spec"]["type"] == "NodePort" and svc["spec"]["ports"][0]["port"] == 7432,
               f"proxy.serviceType / ports.externalPort: {svc['spec']}")
        expect('STKEEPER_UID="pgnode${POD_NAME##*-}"' in " ".join(k["command"]), "keeper.uid_prefix")
        modes = w["stolon-keeper"]["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"]
        expect(modes == ["ReadWriteOncePod"], f"persistence.accessMode: {modes}")
        spec = spec_of(docs)
        pg = spec.get("pgParameters", {})
        expect(pg.get("log_min_duration_statement") == "250", f"slow_queries: {pg}")
        expect(pg.get("ssl_cert_file") == "/run/stolon/ssl/server.crt", f"ssl: {pg}")
        script = " ".join(k["command"])
        expect("server.$ext" in script and "tls.$ext" in script, "SSL key names tls.* / server.* not both accepted")
        return "nameOverride x4, slow_queries x2, ports x2, proxy.serviceType, proxy.listenAddress, uid_prefix, accessMode, server.crt"

    c.run("community chart keys honoured", community_keys)

    def community_defaults() -> str:
        docs = renders["community"]
        w = workloads(docs)
        for comp in COMPONENTS:
            expect(w[comp]["spec"]["replicas"] == 3, f"{comp} replicas")
        k = container(w["stolon-keeper"])
        expect('STKEEPER_UID="stolon${POD_NAME##*-}"' in " ".join(k["command"]), "uid_prefix stolon")
        expect(k["image"] == "sorintlab/stolon:v0.13.0-pg11", f"image {k['image']}")
        expect(k["resources"]["requests"]["memory"] == "512Mi", "resources")
        return "3 replicas each, uid_prefix, image, resources"

    c.run("community chart values.yaml honoured", community_defaults)

    def snapshot() -> str:
        docs = [d for d in inst if d.get("kind") in ("StatefulSet", "Deployment", "Job", "Role", "RoleBinding", "ConfigMap")]
        text = json.dumps(docs, indent=1, sort_keys=True) + "\n"
        path = repo / SNAPSHOT
        if args.update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return f"rewrote {SNAPSHOT}"
        expect(path.exists() and path.read_text() == text,
               f"{SNAPSHOT} differs from the install render: run scripts/validate-k8s.sh --update and commit it")
        return f"{len(docs)} workloads, Roles, RoleBindings, ConfigMaps"

    c.run(f"{SNAPSHOT} is the install render", snapshot)

    def variant() -> str:
        w = workloads(var)
        for comp, d in w.items():
            a = container(d)["args"]
            expect("--store-backend=etcdv3" in a, f"{comp} lacks --store-backend=etcdv3")
            expect("--store-endpoints=http://etcd-0.etcd:2379,http://etcd-1.etcd:2379" in a, f"{comp} endpoints: {a}")
            expect(not [x for x in a if x.startswith("--kube-resource-kind")], f"{comp} has --kube-resource-kind")
            expect("--cluster-name=kube-stolon" in a, f"{comp} cluster name")
            expect(container(d)["image"] == "registry.example/stolon-rs:v9", f"{comp} image {container(d)['image']}")
        sts = w["stolon-keeper"]
        expect("volumeClaimTemplates" not in sts["spec"], "persistence.enabled=false still has claims")
        vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
        expect("emptyDir" in vols.get("data", {}), "persistence.enabled=false without an emptyDir")
        expect(vols.get("client-ssl", {}).get("secret", {}).get("secretName") == "stolon-tls", "client_ssl secret")
        for comp, n in (("stolon-keeper", 3), ("stolon-sentinel", 3), ("stolon-proxy", 3)):
            expect(w[comp]["spec"]["replicas"] == n, f"{comp} replicas")
        ka = container(sts)["args"]
        expect("--pg-su-username=admin" in ka and "--pg-repl-username=replicator" in ka, "user names")
        expect(container(sts).get("resources", {}).get("requests", {}).get("cpu") == "250m", "keeper.resources")
        expect(sts["spec"]["template"]["spec"].get("nodeSelector") == {"disktype": "ssd"}, "nodeSelector")
        spec = spec_of(var)
        pg = spec.get("pgParameters", {})
        expect(pg.get("ssl") == "on" and pg.get("ssl_cert_file", "").endswith("tls.crt"), f"ssl params {pg}")
        expect(pg.get("max_connections") == "200", f"clusterSpec.pgParameters not merged: {pg}")
        expect(spec.get("sleepInterval") == "2s" and spec.get("initMode") == "new", f"clusterSpec {spec}")
        names = [d["metadata"]["name"] for d in find(var, "Service")]
        expect(f"{release}-proxy-ro" in names, f"no read-only Service: {names}")
        expect("--read-only-port=5433" in container(w["stolon-proxy"])["args"], "proxy lacks --read-only-port")
        return "etcdv3 flags, emptyDir, client_ssl, clusterSpec, replicas, image, read-only service"

    c.run("variant values honoured", variant)
    return finish(c)


def finish(c: Checks) -> int:
    print(f"validate-k8s: {c.passed} passed, {c.failed} failed", flush=True)
    return 0 if c.failed == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001 - one clear line instead of a traceback
        print(f"FAIL validate-k8s: {type(e).__name__}: {' '.join(str(e).split())[:600]}", flush=True)
        sys.exit(1)
