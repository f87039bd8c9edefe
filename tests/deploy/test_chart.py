"""The Helm chart, checked with the real tools: `helm lint` and `helm template` over the values
files in the chart's ci/ folder, every rendered manifest validated against the Kubernetes
schemas (kubernetes-validate) or, for the Prometheus Operator CRDs, structurally; the values
schema rejecting bad values; and the rendered ConfigMap accepted by `flespi-bridge check-config`
with the secrets mounted the way the pod gets them."""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from support import REPO

from bridge.config import settings as config
from bridge.config.cluster import ClusterSettings, ordinal

CHART = REPO / "charts" / "flespi-bridge"
CI = CHART / "ci"
GET_HELM = REPO / "tools" / "get_helm.py"
MONITORING = REPO / "monitoring"
RELEASE, NAMESPACE = "fleet", "telematics"
FULLNAME = f"{RELEASE}-flespi-bridge"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest bundled.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
SCENARIOS = ("defaults-with-token", "existing-secret", "monitoring", "tls", "full", "cluster")
EXPECTED_KINDS = {
    "defaults-with-token": ["ConfigMap", "Secret", "Service", "Service", "ServiceAccount",
                            "StatefulSet"],
    "existing-secret": ["ConfigMap", "Service", "Service", "ServiceAccount", "StatefulSet"],
    "monitoring": ["ConfigMap", "ConfigMap", "PrometheusRule", "Secret", "Service", "Service",
                   "ServiceAccount", "ServiceMonitor", "StatefulSet"],
    "tls": ["ConfigMap", "Secret", "Service", "Service", "ServiceAccount", "StatefulSet"],
    "full": ["ConfigMap", "Secret", "Service", "Service", "StatefulSet"],
    "cluster": ["ConfigMap", "PodDisruptionBudget", "PrometheusRule", "Secret", "Service",
                "Service", "ServiceAccount", "ServiceMonitor", "StatefulSet"],
}
# Keys of the bridge's sections that are the chart's own and never reach the TOML.
CHART_KEYS = {
    "flespi": {"token", "existingSecret", "existingSecretKey"},
    "local": {"password", "existingSecret", "existingSecretKey", "tlsSecret"},
    "stream": {"authorization", "existingSecret", "existingSecretKey"},
}
# Bridge options the chart supplies another way (a Secret mounted in the secrets dir).
SECRET_OPTIONS = {("flespi", "token"), ("flespi", "token_file"), ("local", "password"),
                  ("stream", "authorization"), ("stream", "authorization_file")}
SECTIONS = ("flespi", "local", "homeassistant", "commands", "reconnect", "metrics", "shutdown",
            "log", "stream")
# Bridge sections the chart sets itself rather than from a values section of the same name:
# [cluster] shards is `replicas`, and each pod's shard its StatefulSet ordinal.
CHART_SET_SECTIONS = {"cluster"}


# --- helm ---------------------------------------------------------------------------------

@functools.cache
def helm_binary() -> str:
    """Helm 3 through the project's own tools/get_helm.py (PATH first, then the pinned,
    checksummed, cached binary)."""
    proc = subprocess.run([sys.executable, str(GET_HELM)], capture_output=True, text=True,
                          timeout=600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        pytest.fail(f"cannot test the chart without Helm 3: {GET_HELM} exited "
                    f"{proc.returncode}: {proc.stderr.strip()[-500:]}")
    return lines[-1]


def helm(command: str, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    """`helm template` (release fleet in namespace telematics) or `helm lint` of the chart."""
    target = [RELEASE, str(chart), "--namespace", NAMESPACE] if command == "template" else [
        str(chart)]
    return subprocess.run([helm_binary(), command, *target, *args], capture_output=True,
                          text=True, timeout=120)


def values_file(scenario: str) -> Path:
    return CI / f"{scenario}-values.yaml"


def values_of(scenario: str) -> dict[str, Any]:
    data = yaml.safe_load(values_file(scenario).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@functools.cache
def _render(args: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    proc = helm("template", *args)
    assert proc.returncode == 0, f"helm template {' '.join(args)} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(scenario: str | None = None, *sets: str) -> list[dict[str, Any]]:
    args: list[str] = []
    if scenario is not None:
        args += ["--values", str(values_file(scenario))]
    for item in sets:
        args += ["--set", item]
    return [json.loads(json.dumps(doc)) for doc in _render(tuple(args))]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def config_map(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "ConfigMap", next(
        d["metadata"]["name"] for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")))


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (bridge,) = pod_spec(docs)["containers"]
    return dict(bridge)


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(one(docs, "StatefulSet")["spec"]["template"]["spec"])


def services(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the Service in front of the pods, the StatefulSet's headless Service)."""
    (plain,) = [d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") != "None"]
    (headless,) = [d for d in docs if d["kind"] == "Service"
                   and d["spec"].get("clusterIP") == "None"]
    return plain, headless


def pod_env(docs: list[dict[str, Any]]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container(docs)["env"]}


def rendered_toml(docs: list[dict[str, Any]]) -> str:
    return str(config_map(docs)["data"]["config.toml"])


def secret_values(values: dict[str, Any]) -> list[str]:
    found = [values.get("flespi", {}).get("token"), values.get("local", {}).get("password"),
             values.get("stream", {}).get("authorization")]
    return [v for v in found if v]


# --- the test matrix ----------------------------------------------------------------------

def test_ci_values_cover_the_scenarios() -> None:
    present = {p.name.removesuffix("-values.yaml") for p in CI.glob("*-values.yaml")}
    assert present == set(SCENARIOS), f"ci/ holds {sorted(present)}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint(scenario: str) -> None:
    proc = helm("lint", "--strict", "--values", str(values_file(scenario)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_manifests_are_valid_kubernetes(scenario: str) -> None:
    docs = render(scenario)
    assert sorted(d["kind"] for d in docs) == EXPECTED_KINDS[scenario]
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "flespi-bridge", name
        if doc["kind"] in CRD_KINDS:
            continue  # not in the Kubernetes schemas: checked structurally below
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name} is invalid for Kubernetes {version}: {exc.message} "
                            f"at {'.'.join(map(str, exc.path))}")


def test_validation_does_reject_a_broken_manifest() -> None:
    """The validation above can fail: an unknown field and a wrong type are caught."""
    workload = one(render("defaults-with-token"), "StatefulSet")
    workload["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload, K8S_VERSIONS[-1], strict=True)
    workload["spec"]["replicas"] = 1
    workload["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload, K8S_VERSIONS[-1], strict=True)


# --- StatefulSet --------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_replicas_are_the_shards_of_one_fleet(scenario: str) -> None:
    """`replicas` pods with stable names, told the shard count; each pod's host name (its
    name: no hostname or subdomain set) ends in the ordinal the bridge takes as its shard."""
    docs = render(scenario)
    replicas = values_of(scenario).get("replicas", 1)
    workload = one(docs, "StatefulSet")
    spec = workload["spec"]
    assert spec["replicas"] == replicas
    assert spec["updateStrategy"] == {"type": "RollingUpdate"}
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == services(docs)[1]["metadata"]["name"]
    assert pod_env(docs)["FLESPI_BRIDGE_CLUSTER__SHARDS"] == str(replicas)
    assert not {"hostname", "subdomain", "setHostnameAsFQDN"} & set(pod_spec(docs))
    name = workload["metadata"]["name"]
    assert [ordinal(f"{name}-{k}") for k in range(replicas)] == list(range(replicas))


def test_one_replica_by_default_and_no_budget() -> None:
    """The chart's defaults are one bridge, as before the cluster; a budget for one pod
    would only block node drains."""
    docs = render("defaults-with-token")
    assert one(docs, "StatefulSet")["spec"]["replicas"] == 1
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert not [d for d in render("defaults-with-token", "replicas=1",
                                  "podDisruptionBudget.enabled=true")
                if d["kind"] == "PodDisruptionBudget"]


def test_disruption_budget_takes_one_shard_at_a_time() -> None:
    docs = render("cluster")
    budget = one(docs, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in budget["spec"]
    assert budget["spec"]["selector"]["matchLabels"] == one(docs, "StatefulSet")["spec"][
        "selector"]["matchLabels"]
    assert not [d for d in render("cluster", "podDisruptionBudget.enabled=false")
                if d["kind"] == "PodDisruptionBudget"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_headless_service_governs_the_pods(scenario: str) -> None:
    docs = render(scenario)
    plain, headless = services(docs)
    selector = one(docs, "StatefulSet")["spec"]["selector"]["matchLabels"]
    for service in (plain, headless):
        assert service["spec"]["selector"] == selector
    assert headless["metadata"]["name"] == f"{plain['metadata']['name']}-headless"
    assert [p["targetPort"] for p in headless["spec"]["ports"]] == ["metrics"]


@pytest.mark.parametrize("replicas", [1, 3])
def test_each_replica_is_a_valid_bridge_of_its_shard(replicas: int, tmp_path: Path) -> None:
    """Pod k of N, as the bridge sees it: `check-config` with the pod's environment (its
    host name's ordinal stood in for) accepts the ConfigMap, and its client ids are its own:
    `<client_id>-<k>` once the fleet is split."""
    docs = render("defaults-with-token", f"replicas={replicas}")
    for k in range(replicas):
        proc = run_as_the_pod(docs, tmp_path / str(k), replica=k)
        assert proc.returncode == 0, proc.stderr
        own = "flespi-bridge" if replicas == 1 else f"flespi-bridge-{k}"
        assert proc.stdout.count(f"client_id={own} ") == 2  # flespi and the local broker
    proc = run_as_the_pod(docs, tmp_path / "beyond", replica=replicas)
    assert proc.returncode == 2, "a shard past the replicas must be refused"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_security_context(scenario: str) -> None:
    docs = render(scenario)
    pod = pod_spec(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container(docs)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_and_ports_follow_the_metrics_port(scenario: str) -> None:
    docs = render(scenario)
    bridge = container(docs)
    cfg = tomllib.loads(rendered_toml(docs))
    port, *stream = bridge["ports"]
    assert port == {"name": "metrics", "containerPort": cfg["metrics"]["port"],
                    "protocol": "TCP"}
    # the stream's own port, with [stream] enabled
    on = cfg.get("stream", {}).get("enabled", False)
    assert stream == ([{"name": "stream", "containerPort": cfg["stream"]["port"],
                        "protocol": "TCP"}] if on else [])
    assert cfg["metrics"]["enabled"] is True
    assert cfg["metrics"]["host"] == "0.0.0.0"
    assert bridge["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    env = {e["name"]: e.get("value") for e in bridge["env"]}
    assert env["FLESPI_BRIDGE_METRICS__HOST"] == cfg["metrics"]["host"]
    service = services(docs)[0]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"] + (
        ["stream"] if stream else [])
    assert service["spec"]["selector"].items() <= (
        one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"].items())
    assert bridge["resources"]["limits"]["memory"]


def test_scheduling_and_extras_reach_the_pod() -> None:
    values, docs = values_of("full"), render("full")
    pod, bridge = pod_spec(docs), container(docs)
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert pod["priorityClassName"] == "high"
    assert pod["serviceAccountName"] == "fleet"
    assert pod["imagePullSecrets"] == values["imagePullSecrets"]
    assert bridge["image"] == f"{values['image']['repository']}@{values['image']['digest']}"
    assert bridge["resources"] == values["resources"]
    assert {"name": "TZ", "value": "UTC"} in bridge["env"]
    assert values["extraVolumes"][0] in pod["volumes"]
    assert values["extraVolumeMounts"][0] in bridge["volumeMounts"]
    assert bridge["livenessProbe"]["periodSeconds"] == 20
    assert bridge["readinessProbe"]["successThreshold"] == 2
    assert services(docs)[0]["spec"]["type"] == "NodePort"


def test_default_image_is_the_app_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    image = container(render("defaults-with-token"))["image"]
    assert image == f"flespi-bridge:{chart['appVersion']}"


def test_config_change_restarts_the_pod() -> None:
    def checksum(*sets: str) -> str:
        docs = render("defaults-with-token", *sets)
        return str(one(docs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"])
    assert checksum() != checksum("log.level=DEBUG")


# --- secrets ------------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_secret_outside_the_secret(scenario: str) -> None:
    docs = render(scenario)
    secrets = secret_values(values_of(scenario))
    for doc in docs:
        text = json.dumps(doc)
        for value in secrets:
            encoded = base64.b64encode(value.encode()).decode()
            if doc["kind"] == "Secret":
                assert value not in text, "a Secret holds its values base64-encoded"
                assert encoded in doc["data"].values()
            else:
                where = f"{doc['kind']}/{doc['metadata']['name']}"
                assert value not in text, f"a secret value leaks into {where}"
                assert encoded not in text, f"a secret value leaks (base64) into {where}"
    cfg = tomllib.loads(rendered_toml(docs))
    assert "token" not in cfg["flespi"]
    assert "token_file" not in cfg["flespi"]
    assert "password" not in cfg.get("local", {})


def test_token_mounted_from_the_chart_secret() -> None:
    docs = render("defaults-with-token")
    secret = one(docs, "Secret")
    assert secret["metadata"]["name"] == FULLNAME
    assert set(secret["data"]) == {"flespi__token"}
    sources = secret_sources(docs)
    assert sources == {"flespi__token": (FULLNAME, "flespi__token")}


def test_existing_secrets_are_mounted_by_their_keys() -> None:
    docs = render("existing-secret")
    assert not [d for d in docs if d["kind"] == "Secret"], "no Secret may be created"
    assert secret_sources(docs) == {
        "flespi__token": ("flespi-credentials", "api-token"),
        "local__password": ("mosquitto-credentials", "bridge-password"),
    }


def secret_sources(docs: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """{file in the secrets dir: (Secret, key)} from the pod's projected `secrets` volume."""
    pod, bridge = pod_spec(docs), container(docs)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
    (mount,) = [m for m in bridge["volumeMounts"] if m["name"] == "secrets"]
    args = bridge["args"]
    assert args[args.index("--secrets-dir") + 1] == mount["mountPath"]
    assert mount["readOnly"] is True
    files = {}
    for source in volume["projected"]["sources"]:
        for item in source["secret"]["items"]:
            files[item["path"]] = (source["secret"]["name"], item["key"])
    return files


# --- the configuration round trip ---------------------------------------------------------

def run_as_the_pod(docs: list[dict[str, Any]], tmp_path: Path, replica: int = 0
                   ) -> subprocess.CompletedProcess[str]:
    """`flespi-bridge check-config` as the StatefulSet's pod number `replica`, with its
    arguments and environment, the ConfigMap at the config mount and the secrets dir built
    from the projected volume's items (values from the chart's Secret, or stand-ins for
    Secrets that exist outside the chart). The pod's host name, whose ordinal the bridge
    takes as its shard, is stood in for by FLESPI_BRIDGE_CLUSTER__SHARD."""
    bridge, pod = container(docs), pod_spec(docs)
    mounts = {m["name"]: m["mountPath"] for m in bridge["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm = config_map(docs)
    (config_volume,) = [n for n, v in volumes.items()
                        if v.get("configMap", {}).get("name") == cm["metadata"]["name"]]
    args = list(bridge["args"])
    config_path = args[args.index("--config") + 1]
    config_dir, _, config_name = config_path.rpartition("/")
    assert config_dir == mounts[config_volume]
    assert config_name in cm["data"]
    conf = tmp_path / "config" / config_name
    conf.parent.mkdir(parents=True)
    conf.write_text(cm["data"][config_name], encoding="utf-8")
    chart_secret = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for file, (secret, key) in secret_sources(docs).items():
        if secret in chart_secret:
            content = base64.b64decode(chart_secret[secret]["data"][key]).decode()
        else:
            content = f"external-{secret}-{key}"
        (secrets_dir / file).write_text(content, encoding="utf-8")
    # Kubernetes' atomic-writer layout beside the keys: the bridge must skip it.
    (secrets_dir / "..data").mkdir()
    args[args.index("--config") + 1] = str(conf)
    args[args.index("--secrets-dir") + 1] = str(secrets_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLESPI_BRIDGE_")}
    env.update({e["name"]: e["value"] for e in bridge.get("env", []) if "value" in e})
    env["FLESPI_BRIDGE_CLUSTER__SHARD"] = str(replica)
    # The TLS files the config names exist only inside the pod (mounted Secrets): check
    # everything but the files, as one does for a config validated away from its host.
    return subprocess.run([sys.executable, "-m", "bridge", "check-config", *args,
                           "--no-file-checks"],
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_config_map_accepted_by_check_config(scenario: str, tmp_path: Path) -> None:
    values = values_of(scenario)
    proc = run_as_the_pod(render(scenario), tmp_path)
    assert proc.returncode == 0, f"check-config rejected the chart's config:\n{proc.stderr}"
    assert proc.stdout.splitlines()[0] == "ok"
    for value in secret_values(values):
        assert value not in proc.stdout + proc.stderr
    token = values["flespi"].get("token") or (
        f"external-{values['flespi']['existingSecret']}-{values['flespi']['existingSecretKey']}")
    assert f"token=<set, {len(token)} characters>" in proc.stdout
    has_password = bool(values.get("local", {}).get("password")
                        or values.get("local", {}).get("existingSecret"))
    assert ("password=<set," in proc.stdout) == has_password


def test_check_config_round_trip_can_fail(tmp_path: Path) -> None:
    """The round trip is a real check: a ConfigMap the bridge cannot accept is reported."""
    docs = render("defaults-with-token")
    config_map(docs)["data"]["config.toml"] += '\n[mqtt]\nhost = "x"\n'
    proc = run_as_the_pod(docs, tmp_path)
    assert proc.returncode == 2
    assert "mqtt: unknown section" in proc.stderr


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def test_command_profiles_render_as_given() -> None:
    """Nested maps become inline tables holding exactly the values (nulls left out)."""
    cfg = tomllib.loads(rendered_toml(render("full")))
    assert cfg["commands"]["profiles"] == _without_nulls(values_of("full")["commands"]["profiles"])
    assert cfg["commands"]["transport"] == "http"


def test_tls_files_come_from_the_tls_secret() -> None:
    values, docs = values_of("tls"), render("tls")
    cfg = tomllib.loads(rendered_toml(docs))["local"]
    assert cfg["tls"] is True
    pod, bridge = pod_spec(docs), container(docs)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    (mount,) = [m for m in bridge["volumeMounts"] if m["name"] == "tls"]
    assert volume["secret"]["secretName"] == values["local"]["tlsSecret"]["name"]
    files = {f"{mount['mountPath']}/{item['path']}": item["key"]
             for item in volume["secret"]["items"]}
    tls = values["local"]["tlsSecret"]
    assert files == {cfg["ca_file"]: tls["caKey"], cfg["cert_file"]: tls["certKey"],
                     cfg["key_file"]: tls["keyKey"]}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FLESPI_BRIDGE_"):
            monkeypatch.delenv(key)


@pytest.mark.usefixtures("clean_env")
def test_chart_defaults_are_the_bridge_defaults(tmp_path: Path) -> None:
    """Only the deliberate differences: bind on all interfaces, and a broker Service name."""
    conf = tmp_path / "config.toml"
    conf.write_text(rendered_toml(render("defaults-with-token")), encoding="utf-8")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "flespi__token").write_text("t", encoding="utf-8")
    chart = config.load(conf, secrets_dir=secrets).model_dump(mode="json")
    bridge = config.load(overrides={"flespi": {"token": "t"}}).model_dump(mode="json")
    bridge["metrics"]["host"] = "0.0.0.0"
    bridge["local"]["host"] = "mosquitto"
    assert chart == bridge


def test_values_expose_every_bridge_option() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert set(config.Settings.model_fields) == set(SECTIONS) | CHART_SET_SECTIONS, (
        "the bridge's configuration sections changed: update the chart's values, schema, "
        "_helpers.tpl (configToml) and README"
    )
    for section in SECTIONS:
        model = config.Settings.model_fields[section].annotation
        assert model is not None
        options = set(model.model_fields) - {k for s, k in SECRET_OPTIONS if s == section}
        chart = set(values[section]) - CHART_KEYS.get(section, set())
        assert chart == options, (
            f"[{section}] bridge options missing from values.yaml: {sorted(options - chart)}; "
            f"values that are no bridge option: {sorted(chart - options)}"
        )


def test_replicas_range_is_the_bridge_shards_range() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    shards = ClusterSettings.model_json_schema()["properties"]["shards"]
    replicas = schema["properties"]["replicas"]
    assert (replicas["minimum"], replicas["maximum"]) == (shards["minimum"], shards["maximum"])


# --- the values schema --------------------------------------------------------------------

def _branches(prop: dict[str, Any]) -> list[str]:
    """A property schema as a sorted list of its alternatives, without documentation."""
    skip = {"title", "default", "description", "format", "writeOnly"}
    alternatives = prop.get("anyOf") or prop.get("oneOf")
    if alternatives:
        return sorted(b for alt in alternatives for b in _branches(alt))
    if isinstance(prop.get("type"), list):
        return sorted(b for t in prop["type"] for b in _branches(
            {**prop, "type": t} if t != "null" else {"type": "null"}))
    clean = {k: v for k, v in prop.items() if k not in skip}
    if "const" in clean:
        clean["enum"] = [clean.pop("const")]
    if "items" in clean:
        clean["items"] = _branches(clean["items"])
    return [json.dumps(clean, sort_keys=True)]


# Where the chart is deliberately stricter than the bridge, and why.
SCHEMA_DEVIATIONS = {
    ("flespi", "host"): "non-empty",
    ("local", "host"): "non-empty",
    ("flespi", "ca_file"): "an absolute path in the pod",
    ("local", "ca_file"): "an absolute path in the pod",
    ("local", "cert_file"): "an absolute path in the pod",
    ("local", "key_file"): "an absolute path in the pod",
    ("stream", "cert_file"): "an absolute path in the pod",
    ("stream", "key_file"): "an absolute path in the pod",
    ("flespi", "extra_parameters"): "the bridge's name check as a pattern",
    ("metrics", "fleet_parameters"): "non-empty names",
    ("metrics", "enabled"): "must be true: the probes use the metrics port",
    ("metrics", "host"): "all interfaces, for the kubelet and Prometheus",
    ("metrics", "port"): "a fixed port >= 1024 for a non-root container",
    ("stream", "port"): "a fixed port >= 1024 for a non-root container",
    ("log", "level"): "case-insensitive, as the bridge upper-cases it",
    ("commands", "profiles"): "nested command specs written out in the chart's schema",
    ("flespi", "overrides"): "nested override specs written out in the chart's schema",
}


def test_schema_constraints_match_the_bridge() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    for section in SECTIONS:
        model = config.Settings.model_fields[section].annotation
        assert model is not None
        bridge_props = model.model_json_schema()["properties"]
        chart_props = schema["properties"][section]["properties"]
        assert schema["properties"][section]["additionalProperties"] is False
        for option, prop in bridge_props.items():
            if (section, option) in SECRET_OPTIONS:
                continue
            if (section, option) in SCHEMA_DEVIATIONS:
                assert option in chart_props
                continue
            assert _branches(chart_props[option]) == _branches(prop), (
                f"values.schema.json {section}.{option} differs from bridge/config/sections.py"
            )


BAD_VALUES = [
    pytest.param(["--set-string", "flespi.port=8883"], "flespi.port", id="wrong-type"),
    pytest.param(["--set", "local.keepalive=true"], "local.keepalive", id="wrong-type-bool"),
    pytest.param(["--set", "flespi.tokn=abc"], "tokn", id="unknown-key"),
    pytest.param(["--set", "replicaCount=2"], "replicaCount", id="unknown-top-level-key"),
    pytest.param(["--set", "replicas=0"], "replicas", id="no-replica"),
    pytest.param(["--set", "replicas=1025"], "replicas", id="more-replicas-than-shards"),
    pytest.param(["--set-string", "replicas=3"], "replicas", id="replicas-as-string"),
    pytest.param(["--set", "podManagementPolicy=Sometimes"], "podManagementPolicy",
                 id="bad-pod-management"),
    pytest.param(["--set", "podDisruptionBudget.maxUnavailable=0"],
                 "podDisruptionBudget.maxUnavailable", id="budget-blocking-drains"),
    pytest.param(["--set", "log.format=xml"], "log.format", id="bad-enum"),
    pytest.param(["--set", "local.output=yaml"], "local.output", id="bad-enum-output"),
    pytest.param(["--set", "local.qos=2"], "local.qos", id="bad-qos"),
    pytest.param(["--set", "image.pullPolicy=Sometimes"], "image.pullPolicy", id="bad-policy"),
    pytest.param(["--set", "flespi.devices=some"], "flespi.devices", id="bad-devices"),
    pytest.param(["--set", "flespi.port=70000"], "flespi.port", id="out-of-range"),
    pytest.param(["--set", "reconnect.min_delay=0"], "reconnect.min_delay", id="zero-delay"),
    pytest.param(["--set", "flespi.client_id=two words"], "flespi.client_id", id="bad-pattern"),
    pytest.param(["--set", "local.base_topic=fleet/#"], "local.base_topic", id="wildcard"),
    pytest.param(["--set", "metrics.host=127.0.0.1"], "metrics.host", id="loopback-metrics"),
    pytest.param(["--set", "metrics.enabled=false"], "metrics.enabled", id="metrics-off"),
    pytest.param(["--set", "serviceMonitor.interval=often"], "serviceMonitor.interval",
                 id="bad-duration"),
    pytest.param(["--set", "commands.profiles.scooter.lock.component=lock",
                  "--set", "commands.profiles.scooter.lock.command=x"], "commands.profiles",
                 id="bad-profile-key"),
    pytest.param(["--set", "commands.profiles.default.lock.component=door",
                  "--set", "commands.profiles.default.lock.command=x"], "component",
                 id="bad-command-component"),
]


@pytest.mark.parametrize(("args", "where"), BAD_VALUES)
def test_schema_rejects_bad_values(args: list[str], where: str) -> None:
    proc = helm("template", "--values", str(values_file("defaults-with-token")), *args)
    assert proc.returncode != 0, f"accepted: {args}"
    assert "don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert where in proc.stderr, proc.stderr


def test_lint_rejects_bad_values_too() -> None:
    proc = helm("lint", "--values", str(values_file("defaults-with-token")),
                "--set", "log.level=LOUD")
    assert proc.returncode != 0
    assert "log.level" in proc.stdout + proc.stderr


INCONSISTENT_VALUES = [
    pytest.param([], "the flespi token is required", id="no-token"),
    pytest.param(["flespi.token=a", "flespi.existingSecret=s"], "not both", id="two-tokens"),
    pytest.param(["flespi.token=a", "local.password=p", "local.existingSecret=s"], "not both",
                 id="two-passwords"),
    pytest.param(["flespi.token=a", "local.tlsSecret.name=tls"], "local.tls is false",
                 id="tls-secret-without-tls"),
    pytest.param(["flespi.token=a", "local.tls=true", "local.tlsSecret.name=tls",
                  "local.tlsSecret.certKey=tls.crt"], "set together", id="cert-without-key"),
    pytest.param(["flespi.token=a", "local.tls=true", "local.tlsSecret.name=tls",
                  "local.tlsSecret.caKey="], "nothing to mount", id="tls-secret-empty"),
    pytest.param(["flespi.token=a", "local.cert_file=/c.pem"], "set together",
                 id="cert-file-without-key-file"),
    pytest.param(["flespi.token=a", "reconnect.min_delay=10", "reconnect.max_delay=5"],
                 "max_delay", id="delays-reversed"),
    pytest.param(["flespi.token=a", "replicas=2", "stream.enabled=true",
                  "stream.authorization=x"], "stream.enabled needs replicas: 1",
                 id="stream-over-replicas"),
    pytest.param(["flespi.token=a", f"fullnameOverride={'b' * 53}"], "longer than 52",
                 id="statefulset-name-too-long"),
]


@pytest.mark.parametrize(("sets", "message"), INCONSISTENT_VALUES)
def test_inconsistent_values_fail_at_install(sets: list[str], message: str) -> None:
    proc = helm("template", *[a for item in sets for a in ("--set", item)])
    assert proc.returncode != 0, f"accepted: {sets}"
    assert message in proc.stderr, proc.stderr


# --- monitoring ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["alerts.yml", "grafana-dashboard.json"])
def test_chart_copies_are_identical_to_monitoring(name: str) -> None:
    source = MONITORING / name
    assert source.is_file(), f"monitoring/{name} does not exist yet"
    assert (CHART / "files" / name).read_bytes() == source.read_bytes(), (
        f"charts/flespi-bridge/files/{name} differs from monitoring/{name}: "
        f"cp monitoring/{name} charts/flespi-bridge/files/{name}"
    )


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return bool(selector["matchLabels"].items() <= labels.items())


def test_service_monitor_scrapes_each_pod_as_job_flespi_bridge() -> None:
    """Through the headless Service (one target per pod), never both Services (every series
    twice); job="flespi-bridge" as the alert rules select it."""
    docs = render("monitoring")
    monitor, (plain, service) = one(docs, "ServiceMonitor"), services(docs)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert matches(spec["selector"], service["metadata"]["labels"])
    assert not matches(spec["selector"], plain["metadata"]["labels"])
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == "http"
    assert endpoint["interval"] == "15s"
    assert endpoint["scrapeTimeout"] == "5s"
    assert {"targetLabel": "job", "replacement": "flespi-bridge"} in endpoint["relabelings"]
    assert endpoint["metricRelabelings"] == values_of("monitoring")["serviceMonitor"][
        "metricRelabelings"]
    # the alert rules select job="flespi-bridge"
    assert 'job="flespi-bridge"' in (CHART / "files" / "alerts.yml").read_text(encoding="utf-8")


def relabel(rule: dict[str, Any], meta: dict[str, str]) -> str | None:
    """What a `replace` relabeling sets its target label to (Prometheus anchors the regex and
    writes nothing when it does not match)."""
    assert rule.get("action", "replace") == "replace"
    value = ";".join(meta[name] for name in rule["sourceLabels"])
    match = re.fullmatch(rule["regex"], value)
    return None if match is None else match.expand(rule["replacement"].replace("$1", r"\1"))


def test_every_series_of_a_pod_carries_its_shard() -> None:
    """shard="<k>" from the pod's name, the same number the bridge takes from its host name
    (and exports in its own `shard` label, which honorLabels keeps as it is)."""
    docs = render("cluster")
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    (rule,) = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "shard"]
    name = one(docs, "StatefulSet")["metadata"]["name"]
    for k in range(values_of("cluster")["replicas"]):
        pod = f"{name}-{k}"
        assert relabel(rule, {"__meta_kubernetes_pod_name": pod}) == str(k) == str(ordinal(pod))
    assert relabel(rule, {"__meta_kubernetes_pod_name": "fleet-flespi-bridge-5d9c7f-x2x8q"}) is None


def test_prometheus_rule_is_the_project_rule_file() -> None:
    rule = one(render("monitoring"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = yaml.safe_load((CHART / "files" / "alerts.yml").read_text(encoding="utf-8"))
    assert rule["spec"] == rules
    assert rule["spec"]["groups"], "no rule groups"
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "partial_response_strategy"}
        assert group["name"]
        assert group["rules"]
        for item in group["rules"]:
            assert ("alert" in item) != ("record" in item), item
            assert item["expr"], item


def test_dashboard_config_map_for_the_grafana_sidecar() -> None:
    docs = render("monitoring")
    dashboard = one(docs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Fleet"}
    (content,) = dashboard["data"].values()
    assert content == (CHART / "files" / "grafana-dashboard.json").read_text(encoding="utf-8")
    assert json.loads(content)["title"]


def test_monitoring_is_off_by_default() -> None:
    kinds = [d["kind"] for d in render("defaults-with-token")]
    assert not CRD_KINDS & set(kinds)
    assert kinds.count("ConfigMap") == 1


# --- NOTES.txt and README -----------------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_notes_render(scenario: str, tmp_path: Path) -> None:
    """`helm template` leaves NOTES.txt out: render it through a template added to a copy."""
    chart = tmp_path / "flespi-bridge"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ include (print $.Template.BasePath "/NOTES.txt") . | toJson }}\n',
        encoding="utf-8",
    )
    proc = helm("template", "--values", str(values_file(scenario)), chart=chart)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    notes = one(docs, "ConfigMap", "notes")["data"]["notes"]
    fullname = "fleet-bridge" if scenario == "full" else FULLNAME
    assert f"statefulset/{fullname}" in notes
    assert f"--namespace {NAMESPACE}" in notes
    for value in secret_values(values_of(scenario)):
        assert value not in notes


def _leaf_paths(values: Any, prefix: str = "") -> list[str]:
    if isinstance(values, dict) and values:
        return [p for k, v in values.items() for p in _leaf_paths(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    missing = [p for p in _leaf_paths(values) if f"`{p}`" not in readme]
    assert not missing, f"charts/flespi-bridge/README.md does not document: {missing}"
    assert "helm install" in readme
    assert "--set flespi.token=" in readme
    assert "--set flespi.existingSecret=" in readme


def test_packaged_chart_holds_the_monitoring_copies_not_ci(tmp_path: Path) -> None:
    proc = subprocess.run([helm_binary(), "package", str(CHART), "--destination", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (package,) = tmp_path.glob("flespi-bridge-*.tgz")
    with tarfile.open(package) as tar:
        names = set(tar.getnames())
    for name in ("values.schema.json", "README.md", "files/alerts.yml",
                 "files/grafana-dashboard.json", "templates/NOTES.txt"):
        assert f"flespi-bridge/{name}" in names
    assert not [n for n in names if "/ci/" in n]


def test_values_file_and_schema_parse() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert set(values) <= set(schema["properties"])
