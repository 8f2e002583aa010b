"""Checks of the Kubernetes deliverables, run by scripts/validate-k8s.sh inside its venv.

Owns: (a) kubernetes-validate --strict on examples/kubernetes; (b) lint of the Helm chart with
helm-sdkpy and helm-python-sdk, offline renders of the chart, kubernetes-validate --strict on the
renders; (c) checks that the documented install command's keys reach the rendered manifests;
and hadolint on the Dockerfile.

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

# The command users run (from the chart directory); its keys must all be honoured.
INSTALL_COMMAND = (
    "helm install --namespace test --name stolon . --set store.backend=kubernetes "
    "--set persistence.enabled=true --set persistence.storageClassName=defaultScName"
)

# A second set of values exercising the other branches of every template.
VARIANT_SETS = [
    "store.backend=etcdv3",
    "store.endpoints=http://etcd-0.etcd:2379\\,http://etcd-1.etcd:2379",
    "persistence.enabled=false",
    "proxy.readOnly.enabled=true",
    "keeper.client_ssl.enabled=true",
    "keeper.client_ssl.certs_secret_name=stolon-tls",
    "keeper.client_ssl.caFile=ca.crt",
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

# Values that must make rendering fail, with a fragment of the expected message.
BAD_SETS = [
    ("store.backend=consul", "store.backend must be kubernetes or etcdv3"),
    ("store.backend=etcdv3", "store.endpoints is required"),
    ("keeper.client_ssl.enabled=true", "certs_secret_name"),
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
    """Returns (release name, namespace, comma-joined --set expression) of a helm command."""
    words = shlex.split(cmd)
    name = namespace = ""
    sets: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("--namespace", "-n"):
            namespace, i = words[i + 1], i + 2
        elif w == "--name":
            name, i = words[i + 1], i + 2
        elif w == "--set":
            sets.append(words[i + 1])
            i += 2
        else:
            i += 1
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
    install_values = helm_python.parse_set_string(install_sets)
    variant_values = helm_python.parse_set_string(",".join(VARIANT_SETS))

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

    c.run("helm-sdkpy lint deploy/helm/stolon (default values)", lambda: sdkpy_lint(chart_dir))
    c.run(
        f"helm-sdkpy lint deploy/helm/stolon (--set {install_sets})",
        lambda: sdkpy_lint(values_copy(install_values, "lint-install")),
    )
    c.run(
        "helm-sdkpy lint deploy/helm/stolon (variant: etcdv3, emptyDir, read-only, client_ssl)",
        lambda: sdkpy_lint(values_copy(variant_values, "lint-variant")),
    )
    c.run("helm-python-sdk lint --strict (default values)", lambda: hp_lint_check(None))
    c.run("helm-python-sdk lint --strict (install values)", lambda: hp_lint_check(install_values))

    def render(values: dict[str, Any] | None) -> dict[str, str]:
        with Chart.load(chart_dir) as ch:
            return ch.render(values=values, name=release, namespace=namespace, is_install=True)

    renders: dict[str, list[dict[str, Any]]] = {}
    for label, values in (("default", None), ("install", install_values), ("variant", variant_values)):
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

    for bad_set, fragment in BAD_SETS:
        def refused(bad_set: str = bad_set, fragment: str = fragment) -> str:
            try:
                render(helm_python.parse_set_string(bad_set))
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
    if inst is None or dflt is None or var is None:
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

    c.run(f"--name {release}: objects named after the release", release_names)

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
        secret = one(inst, "Secret")
        import base64
        values = [base64.b64decode(v).decode() for k2, v in secret["data"].items() if "password" in k2]
        everything = json.dumps([container(d) for d in workloads(inst).values()])
        expect(all(len(v) >= 16 and v not in everything for v in values), "a password shows up in a pod spec")
        expect(not [x for x in a if x.startswith(("--pg-su-password=", "--pg-repl-password="))], "password in args")
        vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
        expect(vols["passwords"]["secret"]["secretName"] == secret["metadata"]["name"], "passwords volume")
        return "keeper<ordinal> UIDs; passwords as files from the Secret"

    c.run("keeper UID from the ordinal, passwords only as files", keeper_uid_and_secrets)

    def probes_rbac_job() -> str:
        k = container(one(inst, "StatefulSet", "stolon-keeper"))
        probe = " ".join(k["readinessProbe"]["exec"]["command"])
        expect("pg_isready" in probe, "keeper readiness is not pg_isready")
        p = container(one(inst, "Deployment", "stolon-proxy"))
        expect("tcpSocket" in p["readinessProbe"], "proxy readiness is not TCP")
        role = one(inst, "Role")
        rules = {(g, r): set(rule["verbs"]) for rule in role["rules"]
                 for g in rule["apiGroups"] for r in rule["resources"]}
        need = {("", "pods"): {"get", "list", "watch", "patch"},
                ("", "configmaps"): {"get", "list", "create", "update", "patch", "watch"},
                ("coordination.k8s.io", "leases"): {"get", "list", "create", "update", "watch"},
                ("", "events"): {"create", "patch"}}
        for key, verbs in need.items():
            expect(verbs <= rules.get(key, set()), f"Role lacks {key} {verbs - rules.get(key, set())}")
        job = one(inst, "Job", "stolonctl")
        expect(job["metadata"]["annotations"].get("helm.sh/hook") == "post-install", "init Job is not a post-install hook")
        expect("init -y" in " ".join(container(job)["command"]), "init Job does not run stolonctl init -y")
        services = [d["metadata"]["name"] for d in find(inst, "Service")]
        expect(f"{release}-proxy-ro" not in services,
               "read-only Service rendered although proxy.readOnly.enabled is false")
        expect(not [x for x in p["args"] if x.startswith("--read-only-port")], "--read-only-port on by default")
        return "pg_isready, TCP, RBAC verbs, post-install stolonctl init -y, no read-only service"

    c.run("probes, RBAC, init Job, read-only port off by default", probes_rbac_job)

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
