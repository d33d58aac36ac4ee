"""deploy/kubernetes: `kubectl kustomize` renders the base; every object passes the Kubernetes
JSON schemas offline (kubernetes-validate, strict: no unknown fields); the objects refer to each
other correctly (selectors, ports, probes, scrape annotations, the policy ConfigMap); the
policy passes `regionguard validate`; the containers' arguments start the real front ends; and a
ConfigMap update, laid out as the kubelet lays it out, reaches a running `regionguard dns`."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import time
from pathlib import Path

import dns.exception
import pytest
import yaml

from tests.deploy_support import DEPLOY, check_dns_serves, check_proxy_serves, option_values, replace_option
from tests.dns_support import BIN, ZoneServer, addresses, ask
from tests.ports import free_port

BASE = DEPLOY / "kubernetes" / "base"
OVERLAY = DEPLOY / "kubernetes" / "overlays" / "example"
KUBECTL = shutil.which("kubectl")
# The oldest release the base is meant for (autoscaling/v2 and policy/v1 are GA from 1.23/1.21;
# 1.27 is the oldest schema set the validator ships) and the newest it ships.
KUBERNETES_VERSIONS = ("1.27.0", "latest")
IMAGE_UID = 10001   # deploy/container/Containerfile: USER 10001:10001

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip: kubernetes-validate (the test extra)")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (Debian: kubernetes-client)")


def kustomize(directory: Path) -> list[dict]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (Debian: kubernetes-client)")
    done = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return kustomize(BASE)


def of_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def validate(obj: dict, version: str) -> None:
    if version == "latest":
        version = kubernetes_validate.utils.latest_version()
    kubernetes_validate.validate(obj, version, strict=True)


@needs_kubectl
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_passes_the_kubernetes_schemas(rendered, version):
    kinds = sorted(o["kind"] for o in rendered)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "HorizontalPodAutoscaler",
                     "HorizontalPodAutoscaler", "PodDisruptionBudget", "PodDisruptionBudget",
                     "Service", "Service"]
    for obj in rendered:
        validate(obj, version)


@needs_kubectl
def test_the_example_overlay_replaces_image_namespace_and_policy_under_the_fixed_name(tmp_path):
    objects = kustomize(OVERLAY)
    for obj in objects:
        validate(obj, "latest")
        assert obj["metadata"]["namespace"] == "regionguard"
    (configmap,) = of_kind(objects, "ConfigMap").values()
    assert configmap["metadata"]["name"] == "regionguard-policy"
    assert configmap["data"]["policy.yaml"] == (OVERLAY / "policy.yaml").read_text()
    for _deployment, container in pods(objects).values():
        assert container["image"] == "registry.example/regionguard:0.1.0"
    done = subprocess.run([str(BIN / "regionguard"), "validate", str(OVERLAY / "policy.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_kubectl
@pytest.mark.parametrize("breakage", ["replicas-not-a-number", "unknown-field", "probe-without-handler"])
def test_the_schema_check_rejects_a_broken_object(rendered, breakage):
    """The check above can fail."""
    deployment = copy.deepcopy(of_kind(rendered, "Deployment")["regionguard-dns"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    if breakage == "replicas-not-a-number":
        deployment["spec"]["replicas"] = "two"
    elif breakage == "unknown-field":
        container["livenessProbe"]["httpGett"] = container["livenessProbe"].pop("httpGet")
    else:
        container["readinessProbe"]["httpGet"]["port"] = {"name": "metrics"}
    with pytest.raises(kubernetes_validate.utils.ValidationError):
        validate(deployment, "latest")


def pods(rendered) -> dict[str, tuple[dict, dict]]:
    """component → (the Deployment, its one container)."""
    out = {}
    for deployment in of_kind(rendered, "Deployment").values():
        component = deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        containers = deployment["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        out[component] = (deployment, containers[0])
    assert set(out) == {"dns", "proxy"}
    return out


def selects(selector: dict, labels: dict) -> bool:
    return selector and all(labels.get(k) == v for k, v in selector.items())


@needs_kubectl
def test_services_budgets_and_autoscalers_reach_their_pods(rendered):
    services = of_kind(rendered, "Service")
    budgets = of_kind(rendered, "PodDisruptionBudget")
    autoscalers = of_kind(rendered, "HorizontalPodAutoscaler")
    for component, (deployment, container) in pods(rendered).items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
        ports = {(p["name"], p["protocol"]) for p in container["ports"]}
        service = [s for s in services.values() if selects(s["spec"]["selector"], labels)]
        assert len(service) == 1, f"{component}: {len(service)} Services select its pods"
        for port in service[0]["spec"]["ports"]:
            assert (port["targetPort"], port["protocol"]) in ports, f"{component}: {port}"
        # the client's own address reaches the pod (gateway.clients, groups, the audit log)
        assert service[0]["spec"]["externalTrafficPolicy"] == "Local"
        budget = [b for b in budgets.values() if selects(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(budget) == 1
        scaler = [a for a in autoscalers.values()
                  if a["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                     "name": deployment["metadata"]["name"]}]
        assert len(scaler) == 1
        # never below what lets a node drain go on while the budget holds
        assert scaler[0]["spec"]["minReplicas"] > budget[0]["spec"]["minAvailable"]
        assert deployment["spec"]["replicas"] >= scaler[0]["spec"]["minReplicas"]


@needs_kubectl
def test_probes_and_scrape_annotations_use_the_metrics_endpoint(rendered):
    """The interface of issue 13 §1: `--metrics HOST:PORT` serves /metrics, /healthz, /readyz."""
    for component, (deployment, container) in pods(rendered).items():
        (metrics,) = option_values(container["args"], "--metrics")
        port = int(metrics.rsplit(":", 1)[1])
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert named["metrics"] == port
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                               "prometheus.io/path": "/metrics"}, component


@needs_kubectl
def test_pods_run_unprivileged_as_the_image_user(rendered):
    for component, (deployment, container) in pods(rendered).items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == IMAGE_UID, component
        assert pod["automountServiceAccountToken"] is False
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert all(p["containerPort"] >= 1024 for p in container["ports"])   # no capability needed


@needs_kubectl
def test_the_policy_configmap_is_mounted_so_that_updates_reach_the_pods(rendered, tmp_path):
    (configmap,) = of_kind(rendered, "ConfigMap").values()
    assert configmap["metadata"]["name"] == "regionguard-policy"   # a fixed name: no hash suffix
    policy = tmp_path / "policy.yaml"
    policy.write_text(configmap["data"]["policy.yaml"])
    done = subprocess.run([str(BIN / "regionguard"), "validate", str(policy)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for component, (deployment, container) in pods(rendered).items():
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        (mount,) = [m for m in container["volumeMounts"]
                    if volumes[m["name"]].get("configMap", {}).get("name") == "regionguard-policy"]
        # a subPath mount is never updated by the kubelet: the whole ConfigMap as a directory
        assert "subPath" not in mount and mount["readOnly"] is True
        assert option_values(container["args"], "--policy") == [mount["mountPath"] + "/policy.yaml"], component


def runnable_args(container: dict) -> list[str]:
    """The container's arguments, its metrics endpoint moved to a free loopback port (the pod
    binds 0.0.0.0:9180; a test listens on loopback only): the probes are checked against it."""
    return replace_option(list(container["args"]), "--metrics", f"127.0.0.1:{free_port()}")


@needs_kubectl
def test_the_dns_container_arguments_serve_with_the_configmap_policy(rendered, tmp_path):
    (configmap,) = of_kind(rendered, "ConfigMap").values()
    policy = tmp_path / "configmap-policy.yaml"
    policy.write_text(configmap["data"]["policy.yaml"])
    _deployment, container = pods(rendered)["dns"]
    check_dns_serves(runnable_args(container), tmp_path, policy)


@needs_kubectl
def test_the_proxy_container_arguments_serve_with_the_configmap_policy(rendered, tmp_path):
    (configmap,) = of_kind(rendered, "ConfigMap").values()
    policy = tmp_path / "configmap-policy.yaml"
    policy.write_text(configmap["data"]["policy.yaml"])
    _deployment, container = pods(rendered)["proxy"]
    check_proxy_serves(runnable_args(container), tmp_path, policy)


def kubelet_update(volume: Path, files: dict[str, str], generation: int) -> None:
    """Write a ConfigMap volume as the kubelet's atomic writer does: the files in a new
    timestamped directory, the `..data` link swapped to it by rename, each file a link through
    `..data`."""
    payload = volume / f"..2026_12_02_00_00_0{generation}.000000000"
    payload.mkdir()
    for name, text in files.items():
        (payload / name).write_text(text)
    temporary = volume / "..data_tmp"
    temporary.symlink_to(payload.name)
    os.replace(temporary, volume / "..data")
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")


def test_a_configmap_update_reaches_a_running_dns_filter(tmp_path):
    """The base mounts the policy ConfigMap as a directory so that an edit reaches running pods:
    the kubelet swaps a symlink, and `regionguard dns` reloads. unknown.zoom.us's address is
    unplaceable: blocked under `unknown: block`, answered once the ConfigMap says `allow`."""
    base = (BASE / "policy.yaml").read_text()
    assert "unknown: block" in base
    volume = tmp_path / "etc-regionguard"
    volume.mkdir()
    kubelet_update(volume, {"policy.yaml": base}, 1)
    upstream = ZoneServer()
    port = free_port()
    proc = subprocess.Popen([str(BIN / "regionguard"), "dns", "--policy", str(volume / "policy.yaml"),
                             "--listen", f"127.0.0.1:{port}", "--upstream", upstream.address,
                             "--state-dir", "off"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                before = addresses(ask(port, "unknown.zoom.us", timeout=2))
                break
            except (OSError, dns.exception.Timeout):
                assert proc.poll() is None and time.monotonic() < deadline, "regionguard dns did not start"
                time.sleep(0.3)
        assert "192.0.2.99" not in before
        kubelet_update(volume, {"policy.yaml": base.replace("unknown: block", "unknown: allow")}, 2)
        deadline = time.monotonic() + 60
        while "192.0.2.99" not in addresses(ask(port, "unknown.zoom.us", timeout=5)):
            assert time.monotonic() < deadline, "the updated ConfigMap was not picked up in 60 s"
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        upstream.close()
