"""The Kubernetes manifests (deploy/kubernetes): rendered by ``kubectl kustomize`` as an
operator would apply them, every object checked against the Kubernetes 1.32 schemas in strict
mode (kubernetes-validate: unknown fields are errors), and the security properties the
deployment promises asserted on the rendered objects: pods run as a non-root user with a
read-only root file system, no capabilities and the runtime's seccomp profile; kits reach
the pods only as Secrets; a node has no Service and a NetworkPolicy that lets it reach the
coordinator's gRPC port and the cluster DNS and nothing else; no hostPath anywhere.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("example", "example-postgres")
KUBERNETES_VERSION = "1.32.0"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet"}
GRPC_PORT = 7443
DASHBOARD_PORT = 8765
DNS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
       "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}  # fmt: skip


INSTALL_KUBECTL = (
    "install kubectl >= 1.27 (it renders Kustomize; Debian's kubernetes-client 1.20 is too "
    "old): the `kubectl` package of the Kubernetes apt repository pkgs.k8s.io or of Google "
    "Cloud SDK's, or the static binary from dl.k8s.io (scripts/ci_deps.sh)"
)


def kubectl_path() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(f"kubectl is missing: {INSTALL_KUBECTL}")
    done = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    version = json.loads(done.stdout or "{}").get("clientVersion", {})
    minor = int(re.sub(r"\D", "", version.get("minor", "")) or 0)
    if (version.get("major"), minor >= 27) != ("1", True):
        pytest.fail(f"kubectl {version.get('gitVersion', '?')} is too old: {INSTALL_KUBECTL}")
    return kubectl


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = kubectl_path()
    done = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def objects(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return rendered["example"]


def find(objects: list[dict[str, Any]], kind: str, component: str | None = None) -> list[Any]:
    return [
        o
        for o in objects
        if o["kind"] == kind
        and (component is None or labels_of(o).get("app.kubernetes.io/component") == component)
    ]


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("labels", {}))


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec if workload["kind"] == "Pod" else spec["template"]["spec"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Does a label selector (matchLabels only: these manifests use no expressions) match?"""
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def egress_problems(policy: dict[str, Any], coordinator_labels: dict[str, str]) -> list[str]:
    """Why ``policy`` lets a pod reach more than the coordinator's gRPC port and the DNS."""
    problems = []
    spec = policy["spec"]
    if set(spec.get("policyTypes", [])) != {"Ingress", "Egress"}:
        problems.append(f"policyTypes {spec.get('policyTypes')} (both are needed: deny both)")
    if spec.get("ingress"):
        problems.append(f"ingress allowed: {spec['ingress']}")
    for rule in spec.get("egress", []):
        peers, ports = rule.get("to"), rule.get("ports")
        if not peers or not ports:
            problems.append(f"a rule without peers or ports allows every destination: {rule}")
            continue
        found = {(p.get("protocol", "TCP"), p["port"]) for p in ports}
        if any("endPort" in p for p in ports):
            problems.append(f"a port range: {ports}")
        for peer in peers:
            if peer == DNS:
                if found - {("UDP", 53), ("TCP", 53)}:
                    problems.append(f"DNS peer with other ports: {sorted(found)}")
            elif set(peer) == {"podSelector"} and peer["podSelector"].get("matchLabels"):
                if not selects(peer["podSelector"], coordinator_labels):
                    problems.append(f"a pod peer that is not the coordinator: {peer}")
                if found != {("TCP", GRPC_PORT)}:
                    problems.append(f"coordinator peer with ports {sorted(found)}")
            else:
                problems.append(f"a peer that is neither the coordinator nor DNS: {peer}")
    return problems


def test_every_rendered_object_validates_strictly_against_kubernetes_1_32(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, objects in rendered.items():
        kinds = sorted(o["kind"] for o in objects)
        assert kinds == sorted(
            [
                "ConfigMap", "Deployment", "Namespace", "NetworkPolicy", "PersistentVolumeClaim",
                "PersistentVolumeClaim", "Service", "StatefulSet",
            ]
        ), overlay  # fmt: skip
        for obj in objects:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_strict_validation_catches_a_misspelt_field(objects: list[dict[str, Any]]) -> None:
    broken = copy.deepcopy(find(objects, "Deployment", "node")[0])
    broken["spec"]["template"]["spec"]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_pod_runs_non_root_read_only_without_capabilities(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for objects in rendered.values():
        workloads = [o for o in objects if o["kind"] in WORKLOADS]
        assert {w["kind"] for w in workloads} == {"Deployment", "StatefulSet"}
        for workload in workloads:
            spec = pod_spec(workload)
            name = workload["metadata"]["name"]
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True, name
            assert (pod["runAsUser"], pod["runAsGroup"]) == (10001, 10001), name
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert spec["automountServiceAccountToken"] is False, name
            for flag in ("hostNetwork", "hostPID", "hostIPC"):
                assert not spec.get(flag), (name, flag)
            assert all("hostPath" not in v for v in spec.get("volumes", [])), name
            for container in containers(spec):
                context = container["securityContext"]
                where = (name, container["name"])
                assert context["runAsNonRoot"] is True, where
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["readOnlyRootFilesystem"] is True, where
                assert context["capabilities"] == {"drop": ["ALL"]}, where
                assert not context.get("privileged"), where


def test_kits_are_secrets_that_only_the_init_container_reads(
    objects: list[dict[str, Any]],
) -> None:
    expected = {"coordinator": "brca-coordinator-kit", "node": "brca-hospital-a-kit"}
    for kind, component in (("StatefulSet", "coordinator"), ("Deployment", "node")):
        (workload,) = find(objects, kind, component)
        spec = pod_spec(workload)
        secrets = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
        assert list(secrets) == ["kit-secret"]
        # the overlay named the Secret; its files are unreadable to others (0440 at most)
        assert secrets["kit-secret"]["secretName"] == expected[component]
        assert secrets["kit-secret"]["defaultMode"] & 0o337 == 0
        readers = [
            c["name"]
            for c in containers(spec)
            for m in c.get("volumeMounts", [])
            if m["name"] == "kit-secret"
        ]
        assert readers == ["kit"], readers
        (init,) = [c for c in spec["initContainers"] if c["name"] == "kit"]
        (mount,) = [m for m in init["volumeMounts"] if m["name"] == "kit-secret"]
        assert mount["readOnly"] is True
        assert "install -m 0600" in init["args"][0]  # biofed refuses a group-readable key
        (main,) = spec["containers"]
        assert main["args"][main["args"].index("--kit") + 1] == "/var/lib/biofed/kit"
    # no Secret object is rendered: kits never live in these files
    assert not find(objects, "Secret")


def test_the_coordinator_keeps_its_state_on_a_claim_behind_a_cluster_ip_service(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["example"]
    (coordinator,) = find(objects, "StatefulSet", "coordinator")
    assert coordinator["spec"]["replicas"] == 1
    (claim,) = coordinator["spec"]["volumeClaimTemplates"]
    (main,) = pod_spec(coordinator)["containers"]
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/biofed"
    assert main["args"][:2] == ["coordinator", "start"]
    assert main["args"][main["args"].index("--state") + 1] == "$(BIOFED_STATE_URL)"
    assert main["env"] == [
        {"name": "BIOFED_STATE_URL", "value": "sqlite:////var/lib/biofed/state.db"}
    ]
    (service,) = find(objects, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert coordinator["spec"]["serviceName"] == service["metadata"]["name"]
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(coordinator))
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": GRPC_PORT,
        "dashboard": DASHBOARD_PORT,
    }
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {
        "grpc": GRPC_PORT,
        "dashboard": DASHBOARD_PORT,
    }
    (postgres,) = find(rendered["example-postgres"], "StatefulSet", "coordinator")
    (main,) = pod_spec(postgres)["containers"]
    assert main["env"] == [
        {
            "name": "BIOFED_STATE_URL",
            "valueFrom": {"secretKeyRef": {"name": "biofed-coordinator-state", "key": "url"}},
        }
    ]


def test_a_node_is_one_process_with_its_dataset_read_only_and_no_service(
    objects: list[dict[str, Any]],
) -> None:
    (node,) = find(objects, "Deployment", "node")
    assert node["spec"]["replicas"] == 1
    assert node["spec"]["strategy"] == {"type": "Recreate"}
    spec = pod_spec(node)
    (main,) = spec["containers"]
    assert main["args"][:2] == ["node", "start"]
    assert "ports" not in main  # nodes dial out
    volumes = {v["name"]: v for v in spec["volumes"]}
    (data,) = [m for m in main["volumeMounts"] if m["mountPath"] == "/data"]
    assert data["readOnly"] is True
    assert volumes[data["name"]]["persistentVolumeClaim"]["readOnly"] is True
    config = main["args"][main["args"].index("--config") + 1]
    (toml,) = [m for m in main["volumeMounts"] if m["mountPath"] == config]
    assert "configMap" in volumes[toml["name"]]
    for service in find(objects, "Service"):
        assert not selects({"matchLabels": service["spec"]["selector"]}, pod_labels(node))


def test_the_node_network_policy_allows_egress_to_the_coordinator_and_dns_only(
    objects: list[dict[str, Any]],
) -> None:
    (node,) = find(objects, "Deployment", "node")
    (coordinator,) = find(objects, "StatefulSet", "coordinator")
    policies = [
        p
        for p in find(objects, "NetworkPolicy")
        if selects(p["spec"]["podSelector"], pod_labels(node))
    ]
    assert len(policies) == 1
    (policy,) = policies
    assert not selects(policy["spec"]["podSelector"], pod_labels(coordinator))
    assert egress_problems(policy, pod_labels(coordinator)) == []
    peers = [peer for rule in policy["spec"]["egress"] for peer in rule["to"]]
    assert DNS in peers
    assert any(set(p) == {"podSelector"} for p in peers)  # the coordinator is allowed


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda s: s["egress"].append(
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]}
            ),
            "neither",
        ),
        (lambda s: s["egress"].append({"ports": [{"port": 443}]}), "without peers"),
        (lambda s: s["egress"][0]["ports"].append({"port": 8765}), "coordinator peer"),
        (lambda s: s.__setitem__("ingress", [{}]), "ingress allowed"),
        (lambda s: s.__setitem__("policyTypes", ["Egress"]), "policyTypes"),
        (lambda s: s["egress"][1].pop("to"), "without peers"),
    ],
)
def test_the_policy_check_finds_a_wider_policy(
    objects: list[dict[str, Any]], change: Any, problem: str
) -> None:
    (policy,) = find(objects, "NetworkPolicy")
    (coordinator,) = find(objects, "StatefulSet", "coordinator")
    wider = copy.deepcopy(policy)
    change(wider["spec"])
    assert any(problem in p for p in egress_problems(wider, pod_labels(coordinator)))
