"""The chart through real helm: lint, template, schema errors; the Dockerfile and workflow linters.

Integration tier: they run binaries built by devenv/build-tools.sh, no cluster.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support import ALL_ON, CHART, REPO_ROOT, Helm, Manifest, Tools, by_kind, one

pytestmark = pytest.mark.integration

OPERATOR = "edgefill-operator"


@pytest.mark.parametrize("values", [[], [ALL_ON]], ids=["defaults", "all-on"])
def test_helm_lint_passes(helm: Helm, values: list[Path]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for v in values:
        args += ["--values", str(v)]
    proc = helm.run(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.fixture(scope="module")
def defaults(helm: Helm) -> list[Manifest]:
    return helm.render()


@pytest.fixture(scope="module")
def all_on(helm: Helm) -> list[Manifest]:
    return helm.render(values=[ALL_ON])


def _crd_sources() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.mark.parametrize("which", ["defaults", "all-on"])
def test_rendered_crds_are_the_crds_directory(
    which: str, defaults: list[Manifest], all_on: list[Manifest]
) -> None:
    """Parsing and re-serialising inside the template must not change a single field."""
    docs = defaults if which == "defaults" else all_on
    for source in _crd_sources():
        rendered = one(docs, source["kind"], source["metadata"]["name"])
        assert rendered["spec"] == source["spec"]
        assert source["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()
        assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        keep = rendered["metadata"].get("annotations", {}).get("helm.sh/resource-policy")
        assert keep == ("keep" if which == "defaults" else None)


def test_crds_install_false_renders_no_crds(helm: Helm) -> None:
    docs = helm.render(sets=["crds.install=false"], include_crds=False)
    assert by_kind(docs, "CustomResourceDefinition") == []
    assert by_kind(docs, "ValidatingAdmissionPolicy") == []
    assert by_kind(docs, "ValidatingAdmissionPolicyBinding") == []
    one(docs, "Deployment")


def test_default_deployment_is_restricted_and_deliberate(defaults: list[Manifest]) -> None:
    dep = one(defaults, "Deployment", OPERATOR)
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == OPERATOR
    assert pod["serviceAccountName"] == OPERATOR
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["image"] == "edgefill/operator:0.1.0"
    assert c["command"] == ["edgefill-operator"]
    assert "--all-namespaces" in c["args"]
    assert "--standalone" in c["args"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"health": 8080, "metrics": 9100}
    assert c["resources"]["requests"] == {"cpu": "50m", "memory": "128Mi"}
    assert c["resources"]["limits"] == {"memory": "256Mi"}
    kinds = {d["kind"] for d in defaults}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "NetworkPolicy", "ClusterKopfPeering"}
    assert not [d for d in by_kind(defaults, "ConfigMap") if "dashboard" in d["metadata"]["name"]]


def _rules(docs: list[Manifest]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    out.setdefault((group, res), set()).update(rule["verbs"])
    return out


def test_rbac_is_least_privilege(defaults: list[Manifest]) -> None:
    rules = _rules(defaults)
    children = {"get", "list", "watch", "create", "patch", "delete"}
    assert rules == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
        ("", "namespaces"): {"get", "list", "watch"},
        ("edgefill.io", "edgesites"): {"get", "list", "watch", "patch"},
        ("edgefill.io", "contentsets"): {"get", "list", "watch", "patch"},
        ("edgefill.io", "edgesites/status"): {"get", "patch"},
        ("edgefill.io", "contentsets/status"): {"get", "patch"},
        ("apps", "statefulsets"): children,
        ("", "services"): children,
        ("", "configmaps"): children,
        ("", "serviceaccounts"): children,
        ("policy", "poddisruptionbudgets"): children,
        ("networking.k8s.io", "networkpolicies"): children,
        ("", "pods"): {"get", "list", "watch"},
        # The generated peer secret: created once, never read, listed or changed.
        ("", "secrets"): {"create"},
        ("", "events"): {"create", "patch"},
        ("events.k8s.io", "events"): {"create", "patch"},
    }
    # Bound cluster-wide to the chart's ServiceAccount, and nothing else bound.
    bindings = by_kind(defaults, "ClusterRoleBinding")
    assert {b["roleRef"]["name"] for b in bindings} == {OPERATOR, f"{OPERATOR}-reconcile"}
    for b in bindings:
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": OPERATOR, "namespace": "edgefill-system"}
        ]


def test_watch_namespaces_bind_per_namespace(all_on: list[Manifest]) -> None:
    bindings = by_kind(all_on, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["isp-alpha", "isp-beta"]
    assert {b["roleRef"]["kind"] for b in bindings} == {"ClusterRole"}
    assert {b["metadata"]["name"] for b in by_kind(all_on, "ClusterRoleBinding")} == {OPERATOR}
    rules = _rules(all_on)
    assert rules[("kopf.dev", "clusterkopfpeerings")] == {"get", "list", "watch", "patch"}
    # The operator's settings fix one cluster-wide peering object, whatever it watches.
    assert by_kind(all_on, "KopfPeering") == []
    assert one(all_on, "ClusterKopfPeering")["metadata"]["name"] == OPERATOR


def test_all_on_renders_every_option(all_on: list[Manifest]) -> None:
    dep = one(all_on, "Deployment", OPERATOR)
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == (
        "registry.example.org/mirror/edgefill/operator@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert c["args"][:2] == ["--namespace=isp-alpha", "--namespace=isp-beta"]
    assert "--peering=edgefill-operator" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["EDGEFILL_OPERATOR_PRIORITY"] == "200"
    assert env["EDGEFILL_OPERATOR_METRICS_PORT"] == "9100"
    assert "--priority=200" in c["args"]
    assert "--standalone" not in c["args"]
    assert "--verbose" in c["args"]
    assert dep["spec"]["template"]["spec"]["nodeSelector"] == {"edgefill.io/role": "core"}
    assert one(all_on, "ServiceAccount")["metadata"]["name"] == "edgefill-operator-sa"

    sm = one(all_on, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == OPERATOR
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    svc = one(all_on, "Service", f"{OPERATOR}-metrics")
    assert svc["spec"]["ports"][0]["name"] == sm["spec"]["endpoints"][0]["port"]

    pm = one(all_on, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "edgefill-cache-node"
    }
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["isp-alpha", "isp-beta"]}
    relabel = pm["spec"]["podMetricsEndpoints"][0]["relabelings"][0]
    assert relabel == {
        "sourceLabels": ["__meta_kubernetes_pod_label_edgefill_io_site"],
        "targetLabel": "site",
    }

    dash = one(all_on, "ConfigMap", "edgefill-dashboard")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["edgefill.json"]) == json.loads(
        (CHART / "files" / "dashboards" / "edgefill.json").read_text()
    )

    np = one(all_on, "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress_ports = [p["port"] for rule in np["spec"]["egress"] for p in rule["ports"]]
    assert egress_ports == [53, 53, 443, 6443, 9090]


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (
            ["crds.kepp=true"],
            r"additional properties 'kepp' not allowed",
        ),
        (
            ["operator.peerng.enabled=true"],
            r"additional properties 'peerng' not allowed",
        ),
        (
            ["crds.keep=maybe"],
            r"/crds/keep.*got string, want boolean",
        ),
        (
            ["operator.health.port=http"],
            r"/operator/health/port.*got string, want integer",
        ),
        (
            ["operator.peering.priority=666"],
            r"/operator/peering/priority.*maximum: got 666, want 665",
        ),
    ],
    ids=["misspelled-top-level-section-key", "misspelled-nested-key", "bool", "int", "max"],
)
def test_schema_rejects_with_a_clear_message(helm: Helm, sets: list[str], expected: str) -> None:
    proc = helm.template(sets=sets)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert re.search(expected, proc.stderr), proc.stderr


def test_serviceaccount_name_required_when_not_created(helm: Helm) -> None:
    proc = helm.template(sets=["serviceAccount.create=false"])
    assert proc.returncode != 0
    assert "serviceAccount.name is required when serviceAccount.create is false" in proc.stderr


def test_packaged_chart_carries_its_crds(helm: Helm, tmp_path: Path) -> None:
    proc = helm.run("package", str(CHART), "--destination", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (archive,) = tmp_path.glob("edgefill-0.1.0.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for crd in (REPO_ROOT / "crds").glob("*.yaml"):
        assert f"edgefill/files/crds/{crd.name}" in names
    assert "edgefill/crds/clusterkopfpeering.kopf.dev.yaml" in names
    assert "edgefill/values.schema.json" in names
    assert "edgefill/files/dashboards/edgefill.json" in names
    assert "edgefill/sync-crds.sh" not in names


def test_dockerfile_passes_hadolint(tools: Tools) -> None:
    proc = subprocess.run(
        [str(tools.hadolint), "--failure-threshold", "info", str(REPO_ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_targets_run_as_non_root() -> None:
    """The two release targets exist and inherit a numeric non-root USER from `runtime`."""
    text = (REPO_ROOT / "Dockerfile").read_text()
    stages = {name: base for base, name in re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)}
    assert stages["operator"] == "runtime"
    assert stages["cache-node"] == "runtime"
    runtime = text.split("AS runtime", 1)[1].split("\nFROM ", 1)[0]
    assert re.search(r"^USER 65532:65532$", runtime, re.M)
    assert "COPY --from=build /opt/edgefill /opt/edgefill" in runtime
    assert "pip install" not in runtime


def test_workflow_passes_actionlint(tools: Tools) -> None:
    proc = subprocess.run(
        [str(tools.actionlint), "-no-color"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kind_script_is_valid_bash() -> None:
    for script in (".github/scripts/kind-e2e.sh", "charts/edgefill/sync-crds.sh"):
        proc = subprocess.run(["bash", "-n", str(REPO_ROOT / script)], check=False)
        assert proc.returncode == 0, script
