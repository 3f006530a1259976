"""The Kubernetes files (k8s/) and the health wiring of the Dockerfile and compose: valid offline, and in
agreement with each other, with the Dockerfile and with example/pool.yml.

Core objects are validated with kubernetes-validate (schemas bundled, strict: unknown fields are
errors); KEDA's objects against the fields KEDA documents (keda.sh/docs: "ScaledObject
specification", scaler "Redis Lists", "TriggerAuthentication").
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import wait_for
from test_health import current_problem
from test_shipping import (
    DOCKERFILE,
    ROOT,
    base_env,
    instructions,
    parse_duration,
    read_compose,
    read_dockerfile,
    term_timeouts,
)

from entrypoint.cli import HEALTH_TIMEOUT
from entrypoint.config import load_config
from entrypoint.control import default_socket_path
from entrypoint.memory import auto_worker_count

K8S = ROOT / "k8s"
KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
# The oldest Kubernetes the files are meant for (PodDisruptionBudget's unhealthyPodEvictionPolicy
# is GA from 1.31) and the newest whose schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ["1.31.0", None]
NOT_CORE = {"keda.sh/v1alpha1", "kustomize.config.k8s.io/v1beta1"}
HEALTH_COMMAND = ["entrypoint", "--health"]
# The example's preloaded RQ worker at its peak (what it holds alone, its job's work-horse included)
# and what the pod holds whatever the count (the manager, the monitor with metrics on, the template's
# pages), as `auto` plans them with jobs running in a 512 MiB cgroup: `python3 benchmarks/example_pod.py`
# settles on 20 crunch workers; the pool's log line: "15.4 MiB per worker at peak, not shared with
# the template, 115.3 MiB for the rest" (the rest: this base and the 3 other workers; RQ 3, Python
# 3.11). keda.yaml's listLength for an auto group is derived from these.
EXAMPLE_WORKER_PEAK = int(15.5 * 1024 * 1024)
EXAMPLE_BASE = 69 * 1024 * 1024

# The fields KEDA documents, by level (ScaledObject spec; the redis scaler; TriggerAuthentication).
SCALED_OBJECT_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                      "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced",
                      "triggers"}
SCALE_TARGET_REF = {"apiVersion", "kind", "name", "envSourceContainerName"}
ADVANCED = {"restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig", "scalingModifiers"}
HPA_CONFIG = {"name", "behavior"}
TRIGGER = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
REDIS_METADATA = {"address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv",
                  "usernameFromEnv", "passwordFromEnv", "listName", "listLength", "activationListLength",
                  "enableTLS", "unsafeSsl", "databaseIndex"}
REDIS_AUTH_PARAMETERS = {"address", "host", "port", "username", "password", "tls", "ca", "cert", "key"}
TRIGGER_AUTH_SPEC = {"secretTargetRef", "env", "configMapTargetRef", "hashiCorpVault", "azureKeyVault",
                     "podIdentity", "gcpSecretManager", "awsSecretManager", "boundServiceAccountToken"}


# ------------------------------------------------------------------------------- reading k8s/


def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def every_object() -> list[tuple[str, dict]]:
    """(file, object) for every object the kustomization applies."""
    return [(name, doc) for name in kustomization()["resources"] for doc in documents(name)]


def kustomization() -> dict:
    return documents("kustomization.yaml")[0]


def the(kind: str, name: str | None = None) -> dict:
    found = [doc for _, doc in every_object()
             if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def worker_deployment() -> dict:
    return the("Deployment", the("ScaledObject")["spec"]["scaleTargetRef"]["name"])


def worker_container() -> dict:
    containers = worker_deployment()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container: entrypoint is its PID 1"
    return containers[0]


def pod_spec() -> dict:
    return worker_deployment()["spec"]["template"]["spec"]


def secret_data(name: str) -> dict[str, str]:
    secret = the("Secret", name)
    assert "data" not in secret, "stringData: the shape readable as it is"
    return secret["stringData"]


def container_env() -> dict[str, str]:
    """The worker container's environment, Secret references resolved from secret.yaml."""
    env = {}
    for item in worker_container()["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret_data(ref["name"])[ref["key"]]
    return env


def pool_env() -> dict[str, str]:
    """What the pool in the pod reads: the image's ENV, then the Deployment's, mapped onto this tree."""
    return base_env(**read_dockerfile().host_env(), **container_env())


def term_timeout() -> float:
    """The longest grace any group of the pod's pool gives its workers (the pool's own rule)."""
    args = worker_container().get("args", [])
    return max(term_timeouts(args, pool_env()).values())


def image_uid_gid() -> tuple[int, int | None]:
    return read_dockerfile().uid_gid


_QUANTITY = re.compile(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?")
_FACTORS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9,
            "T": 10**12}


def quantity_bytes(text: str | int) -> int:
    """A Kubernetes memory quantity in bytes: 512Mi (binary), 500M (decimal) or plain bytes."""
    match = _QUANTITY.fullmatch(str(text))
    assert match, f"not a memory quantity these tests read: {text!r}"
    return int(match[1]) * _FACTORS[match[2]]


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS, ids=lambda v: v or "newest")
def test_every_core_object_validates_strictly_offline(version):
    assert KUBERNETES_VALIDATE.exists(), (
        f"{KUBERNETES_VALIDATE} is missing: pip install -e '.[test]' (kubernetes-validate)")
    files = [str(K8S / name) for name in kustomization()["resources"]]
    command = [str(KUBERNETES_VALIDATE), "--strict", *(["-k", version] if version else []), *files]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    core = [doc for _, doc in every_object() if doc["apiVersion"] not in NOT_CORE]
    assert {doc["kind"] for doc in core} >= {"Deployment", "Service", "Secret", "PodDisruptionBudget"}
    for doc in core:  # an object with no schema (a mistyped apiVersion) only gets a warning
        passed = f"passed for resource {doc['kind'].lower()}/{doc['metadata']['name']} against version "
        if version:
            passed += version.rsplit(".", 1)[0]
        assert passed in result.stdout, f"{doc['kind']} {doc['metadata']['name']} was not validated:\n{result.stdout}"


def test_kustomization_applies_every_file_and_names_the_image():
    listed = kustomization()["resources"]
    present = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present
    images = {image["name"] for image in kustomization()["images"]}
    assert worker_container()["image"].split(":")[0] in images


# ------------------------------------------------------------------------------- the Deployment


def test_deployment_runs_the_images_entrypoint_as_pid_1_as_its_user():
    container = worker_container()
    image = read_dockerfile()
    assert image.entrypoint == ["entrypoint"] and image.entrypoint_exec_form
    assert "command" not in container, "command: replaces the image's ENTRYPOINT"
    assert all(arg.startswith("-") for arg in container.get("args", [])), "args would make entrypoint run a command"
    spec = pod_spec()
    assert not spec.get("shareProcessNamespace"), "entrypoint is PID 1 of its container"
    uid, gid = image_uid_gid()
    security = {**spec["securityContext"], **container["securityContext"]}
    assert (security["runAsUser"], security.get("runAsGroup")) == (uid, gid)
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False


def test_deployment_env_names_are_ones_the_image_reads():
    env = container_env()
    image = read_dockerfile()
    help_text = subprocess.run([sys.executable, "-m", "entrypoint", "--help"], capture_output=True, text=True,
                               cwd=ROOT, timeout=30, env=base_env()).stdout
    config_text = Path(image.host_env()["POOL_CONFIG"]).read_text()
    for name in env:
        assert (re.search(rf"^\s+{name}\b", help_text, re.MULTILINE)
                or f"${{{name}" in config_text), f"{name}: neither entrypoint nor the example's config reads it"
    assert "POOL_CONFIG" not in env or env["POOL_CONFIG"] == image.env["POOL_CONFIG"]
    config = load_config(None, pool_env(), ROOT)
    assert config.source.endswith("example/pool.yml")


def test_only_emptydir_mounts_are_written_and_they_hold_the_control_socket():
    container, spec = worker_container(), pod_spec()
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
    assert all("emptyDir" in volume for volume in mounts.values())
    uid, _ = image_uid_gid()
    socket_dir = Path(default_socket_path(container_env(), uid)).parent
    assert any(socket_dir.is_relative_to(path) for path in mounts), (
        f"{socket_dir} is on the read-only root filesystem: the pool cannot open its control socket")


def test_memory_request_equals_the_limit_that_auto_sizes_the_pool_to():
    resources = worker_container()["resources"]
    assert quantity_bytes(resources["requests"]["memory"]) == quantity_bytes(resources["limits"]["memory"])
    assert any(group.auto for group in load_config(None, pool_env(), ROOT).groups), "no group says auto"


def test_grace_period_outlasts_the_term_timeout():
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert container_env()["TERM_TIMEOUT"] and term_timeout() < grace, (
        f"terminationGracePeriodSeconds {grace}: the kubelet KILLs before the pool's grace {term_timeout()}")


@pytest.mark.parametrize("probe", ["livenessProbe", "readinessProbe"])
def test_probes_run_entrypoint_health_within_their_timeout(probe):
    settings = worker_container()[probe]
    assert settings["exec"]["command"] == HEALTH_COMMAND
    assert settings["timeoutSeconds"] > HEALTH_TIMEOUT, "our own timeout must answer first, with its line"


def test_liveness_gives_a_recycled_worker_its_grace():
    liveness = worker_container()["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > term_timeout()


def test_keda_owns_the_replica_count_and_labels_select_the_pods():
    deployment = worker_deployment()
    assert "replicas" not in deployment["spec"], "kubectl apply would reset KEDA's count"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    budget = the("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "minAvailable" not in budget["spec"], "minAvailable 1 with one replica blocks every drain"
    assert budget["spec"]["maxUnavailable"] >= 1


def test_metrics_port_is_named_and_annotated_where_metrics_port_points():
    ports = {port["name"]: port["containerPort"] for port in worker_container()["ports"]}
    annotations = worker_deployment()["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"] == int(container_env()["METRICS_PORT"])
    assert annotations["prometheus.io/scrape"] == "true"


# ------------------------------------------------------------------------------- Redis and KEDA


def redis_url() -> tuple[str, int, int]:
    url = urlsplit(container_env()["REDIS_URL"])
    return url.hostname or "", url.port or 6379, int(url.path.strip("/") or 0)


def test_the_trial_redis_is_where_redis_url_points_and_marked_not_for_production():
    host, port, _ = redis_url()
    service = the("Service", host)
    assert port in [p["port"] for p in service["spec"]["ports"]]
    assert (K8S / "redis.yaml").read_text().startswith("# NOT FOR PRODUCTION")
    redis = the("Deployment", "redis")
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()


def test_keda_reaches_the_same_redis_from_its_own_namespace():
    host, port, _ = redis_url()
    auth = the("TriggerAuthentication")
    assert set(auth["spec"]) <= TRIGGER_AUTH_SPEC
    refs = auth["spec"]["secretTargetRef"]
    assert {ref["parameter"] for ref in refs} <= REDIS_AUTH_PARAMETERS
    address = next(secret_data(ref["name"])[ref["key"]] for ref in refs if ref["parameter"] == "address")
    keda_host, _, keda_port = address.rpartition(":")
    assert keda_host.startswith(f"{host}.") and keda_host.endswith(".svc.cluster.local"), (
        f"{address}: KEDA resolves names from its own namespace, so it needs {host}'s full name")
    assert int(keda_port) == port


def test_scaled_object_has_only_documented_fields():
    scaled = the("ScaledObject")
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC
    assert set(spec["scaleTargetRef"]) <= SCALE_TARGET_REF
    assert set(spec.get("advanced", {})) <= ADVANCED
    assert set(spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {})) <= HPA_CONFIG
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    for trigger in spec["triggers"]:
        assert set(trigger) <= TRIGGER and trigger["type"] == "redis"
        metadata = trigger["metadata"]
        assert set(metadata) <= REDIS_METADATA and {"listName", "listLength"} <= set(metadata)
        assert all(isinstance(value, str) for value in metadata.values()), "KEDA's metadata is strings only"
        assert trigger["authenticationRef"]["name"] == the("TriggerAuthentication")["metadata"]["name"]


def test_scaled_object_scales_the_worker_deployment():
    target = the("ScaledObject")["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and target.get("apiVersion", "apps/v1") == "apps/v1"
    the("Deployment", target["name"])  # fails unless exactly one Deployment has that name
    assert target.get("envSourceContainerName", worker_container()["name"]) == worker_container()["name"]


def workers_per_pod() -> dict[str, int]:
    """queue -> workers serving it in one pod: fixed counts as configured, `auto` as it fits the limit;
    a group on several queues serves each, and `'*'` every queue the others name."""
    config = load_config(None, pool_env(), ROOT)
    limit = quantity_bytes(worker_container()["resources"]["limits"]["memory"])
    fixed = sum(group.count or 0 for group in config.groups if not group.auto)
    rest = EXAMPLE_BASE + fixed * EXAMPLE_WORKER_PEAK
    named = {queue for group in config.groups for queue in group.queues if queue != "*"}
    per_queue: dict[str, int] = {}
    for group in config.groups:
        count = group.count if not group.auto else auto_worker_count(
            limit, config.memory_headroom, rest, EXAMPLE_WORKER_PEAK, group.min_count, group.max_count)
        for queue in named if "*" in group.queues else group.queues:
            per_queue[queue] = per_queue.get(queue, 0) + (count or 0)
    return per_queue


def test_one_trigger_per_example_queue_with_list_length_from_the_workers_per_pod():
    triggers = {t["metadata"]["listName"]: t["metadata"] for t in the("ScaledObject")["spec"]["triggers"]}
    per_pod = workers_per_pod()
    assert sorted(triggers) == sorted(f"rq:queue:{queue}" for queue in per_pod), "one trigger per queue"
    _, _, database = redis_url()
    for queue, workers in per_pod.items():
        metadata = triggers[f"rq:queue:{queue}"]
        assert int(metadata["listLength"]) == workers, f"{queue}: {workers} workers per pod"
        assert int(metadata.get("databaseIndex", "0")) == database


def test_scale_in_waits_longer_than_the_term_timeout():
    spec = the("ScaledObject")["spec"]
    assert spec["cooldownPeriod"] > term_timeout()
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] > term_timeout()
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert all(policy["periodSeconds"] >= grace for policy in scale_down["policies"])


# ------------------------------------------------------------------------------- Docker health


def healthcheck() -> tuple[dict[str, str], list[str]]:
    """The Dockerfile's HEALTHCHECK: its --options and its exec-form command."""
    found = [rest for keyword, rest in instructions(DOCKERFILE.read_text()) if keyword == "HEALTHCHECK"]
    assert len(found) == 1, found
    words = shlex.split(found[0].partition(" CMD ")[0])
    options = dict(word.removeprefix("--").split("=", 1) for word in words)
    command = found[0].partition(" CMD ")[2].strip()
    assert command.startswith("["), "exec form: no shell between Docker and entrypoint"
    return options, json.loads(command)


def test_dockerfile_healthcheck_runs_entrypoint_health():
    options, command = healthcheck()
    assert command == HEALTH_COMMAND
    assert parse_duration(options["timeout"]) > HEALTH_TIMEOUT


def test_compose_worker_is_healthy_before_e2e_starts():
    services = read_compose()["services"]
    check = services["worker"]["healthcheck"]
    assert check["test"] == ["CMD", *HEALTH_COMMAND]
    assert parse_duration(check["timeout"]) > HEALTH_TIMEOUT
    assert services["e2e"]["depends_on"]["worker"]["condition"] == "service_healthy"


def test_the_shipped_health_commands_find_a_pool_through_the_shared_environment(runner, tmp_path):
    # Docker and the kubelet run the check in the container, with its environment and user:
    # POOL_SOCKET (or the per-user default) is the pool's own.
    (tmp_path / "pool.yml").write_text("q:\n  count: 1\n  command: [sleep, '1000']\n")
    env = runner.env(POOL_SOCKET=str(tmp_path / "pool.sock"))
    pool = runner.start([], env=env)
    wait_for(lambda: current_problem(str(tmp_path / "pool.sock")) is not None, 10, "the pool to answer")
    commands = {"Dockerfile": healthcheck()[1],
                "compose": read_compose()["services"]["worker"]["healthcheck"]["test"][1:],
                **{probe: worker_container()[probe]["exec"]["command"]
                   for probe in ("livenessProbe", "readinessProbe")}}
    for source, command in commands.items():
        program = Path(sys.executable).parent / command[0]
        result = subprocess.run([str(program), *command[1:]], env=env, capture_output=True, text=True, timeout=15)
        assert result.returncode == 0, f"{source}: {result.stdout}{result.stderr}"
    pool.send_signal(signal.SIGTERM)
    pool.communicate(timeout=20)
    assert pool.returncode == 0
