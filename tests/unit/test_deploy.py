"""Checks of the deployment files under deploy/ against the code they deploy.

Every YAML and JSON file parses; every metric the alerts, the dashboard and the docs name is one the
learner exports (`stream_learner.metrics`); every ``STREAM_LEARNER_*`` variable names a real setting
and every learner.toml loads with the environment its manifest gives it; ports, paths, labels and
grace periods agree between the Dockerfile, compose, Kubernetes, Prometheus and Grafana. promtool
(``$PROMTOOL``, on PATH, or fetched by deploy/prometheus/promtool.sh) checks the Prometheus files and
runs the alert rules' unit tests (deploy/prometheus/alerts_test.yml); in CI a missing promtool fails.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream_learner import config
from stream_learner.cli.parser import parse
from stream_learner.config import DeliverySettings, MetricsSettings, Settings, load_settings
from stream_learner.kafka.admin import snapshot_topic_config
from stream_learner.metrics import Metrics, ServiceMetrics, SubscriberMetrics
from stream_learner.runtime.distributed.start import check_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
OPERATIONS = REPO / "docs" / "operations.md"
CONTAINER_CONFIG = "/etc/stream-learner/learner.toml"
LABEL_APP = "app.kubernetes.io/name"
LABEL_MODEL = "stream-learner/model"

METRIC_RE = re.compile(r"\bstream_learner_[a-z0-9_]*[a-z0-9]\b")
RECORDED_RE = re.compile(r"\bstream_learner:[a-z0-9_:]*[a-z0-9_]\b")
ENV_RE = re.compile(r"\bSTREAM_LEARNER_[A-Z0-9_]*[A-Z0-9]\b")

# Metrics the dashboard must show (the brief's list of panels).
DASHBOARD_METRICS = {
    "stream_learner_events_consumed_total",
    "stream_learner_events_invalid_total",
    "stream_learner_events_late_total",
    "stream_learner_consumer_lag_records",
    "stream_learner_watermark_timestamp_seconds",
    "stream_learner_event_time_lag_seconds",
    "stream_learner_validation_loss",
    "stream_learner_validation_auc",
    "stream_learner_train_loss",
    "stream_learner_learning_rate",
    "stream_learner_drift_detected_total",
    "stream_learner_windows_trained_total",
    "stream_learner_windows_skipped_total",
    "stream_learner_train_step_duration_seconds_bucket",
    "stream_learner_snapshot_size_bytes",
    "stream_learner_snapshot_published_total",
    "stream_learner_model_freshness_seconds",
    "stream_learner_model_version",
    "stream_learner_paused_partitions",
    "stream_learner_active",
    "stream_learner_snapshots_held_total",
    "stream_learner_gate_held",
    "stream_learner_rollbacks_total",
    "stream_learner_catchup_mode",
    "stream_learner_catchup_eta_seconds",
    "stream_learner_serving_request_duration_seconds_bucket",
    "stream_learner_serving_request_duration_seconds_count",
    "stream_learner_serving_model_age_seconds",
    "stream_learner_serving_ready",
}

# Alerts the runbook promises (docs/operations.md).
EXPECTED_ALERTS = {
    "StreamLearnerNoActiveInstance",
    "StreamLearnerMultipleActive",
    "StreamLearnerAbsent",
    "StreamLearnerModelAbsent",
    "StreamLearnerConsumerLagGrowing",
    "StreamLearnerModelStale",
    "StreamLearnerNotTraining",
    "StreamLearnerWindowsSkipped",
    "StreamLearnerInvalidEventsHigh",
    "StreamLearnerSnapshotsStalled",
    "StreamLearnerValidationAUCDrop",
    "StreamLearnerFrequentDrift",
    "StreamLearnerRestoreRefusedSnapshots",
    "StreamLearnerSnapshotsHeld",
    "StreamLearnerRollbackRefused",
    "StreamLearnerCatchUpSlow",
    "StreamLearnerServingModelStale",
    "StreamLearnerServingLatencyHigh",
    "StreamLearnerServingNotReady",
}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


# -- helpers ---------------------------------------------------------------------------------------
@cache
def exported_metric_names() -> frozenset[str]:
    """Every sample name the learner and the subscriber can expose."""
    names: set[str] = set()
    registry = CollectorRegistry()
    Metrics(registry)
    SubscriberMetrics("m", registry)
    ServiceMetrics("m", registry, newest_event_ms=lambda: None, ready=lambda: False)
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return frozenset(names)


def yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def yaml_files() -> list[Path]:
    return sorted(p for ext in ("*.yml", "*.yaml") for p in DEPLOY.rglob(ext))


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with the default (the variables are not set in tests)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def k8s_objects(directory: Path = K8S) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -f DIRECTORY`` applies (not those of subfolders such as examples/)."""
    return [doc for path in sorted(directory.glob("*.yaml")) for doc in yaml_docs(path)]


def k8s_object(kind: str, directory: Path = K8S) -> dict[str, Any]:
    found = [o for o in k8s_objects(directory) if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} under {directory}, found {len(found)}"
    return found[0]


def learner_container() -> dict[str, Any]:
    containers = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "learner")


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    variables = dashboard()["templating"]["list"]
    exprs += [v["definition"] for v in variables if v.get("type") == "query"]
    return exprs


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of a Markdown text."""
    anchors = set()
    for line in markdown.splitlines():
        if m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            text = re.sub(r"[`*_]", "", m.group(1)).strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text)))
    return anchors


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions (``FROM`` first), by the stage's name, in the file's order."""
    stages: dict[str, list[tuple[str, str]]] = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            name = args.split()[-1] if " AS " in args.upper() else f"stage{len(stages)}"
            stages[name] = []
        if stages:
            stages[list(stages)[-1]].append((keyword, args))
    return stages


def image_instructions(target: str) -> list[tuple[str, str]]:
    """The instructions that make the image of stage ``target``: those of the stages it builds on
    (``FROM <stage>``), then its own."""
    stages = dockerfile_stages()
    own = stages[target]
    parent = own[0][1].split()[0]
    return (image_instructions(parent) if parent in stages else []) + own[1:]


def dockerfile_env(target: str = "learner") -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in image_instructions(target):
        if keyword == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore ``patterns`` leave ``path`` (relative to the context) out; last match wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
            ignored = not negate
    return ignored


def probe_port(container: dict[str, Any], probe: str) -> int:
    port = container[probe]["httpGet"]["port"]
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def shutdown_timeout() -> float:
    """How long the learner may take on SIGTERM to finish, publish, commit and close."""
    return DeliverySettings().shutdown_timeout_seconds


def parse_duration(value: str | int) -> float:
    if isinstance(value, int):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)([hms])", value):
        total += float(number) * units[unit]
    return total


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No STREAM_LEARNER_* variables of the machine running the tests."""
    for name in list(os.environ):
        if name.upper().startswith(config.ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


def load_with_env(path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(path)


# -- every file parses -----------------------------------------------------------------------------
def test_every_yaml_and_json_file_parses() -> None:
    files = yaml_files()
    names = {p.relative_to(DEPLOY).as_posix() for p in files}
    for required in (
        "compose.yaml",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "k8s/deployment.yaml",
        "grafana/provisioning/datasources/prometheus.yaml",
        "grafana/provisioning/dashboards/stream-learner.yaml",
    ):
        assert required in names
    for path in files:
        assert yaml_docs(path), f"{path} is empty"
    json_files = sorted(DEPLOY.rglob("*.json"))
    assert DASHBOARD in json_files
    for path in json_files:
        assert isinstance(json.loads(path.read_text()), dict), path
    for path in sorted(DEPLOY.rglob("*.toml")):
        tomllib.loads(path.read_text())


# -- metric names ----------------------------------------------------------------------------------
def _metric_texts() -> Iterator[tuple[str, str]]:
    yield "alerts.yml", (PROMETHEUS / "alerts.yml").read_text()
    yield "alerts_test.yml", (PROMETHEUS / "alerts_test.yml").read_text()
    yield "dashboard.json", "\n".join(dashboard_exprs())
    for path in [REPO / "README.md", DEPLOY / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        if path.exists():
            yield str(path.relative_to(REPO)), path.read_text()


def test_exported_names_include_the_suffixes_prometheus_adds() -> None:
    names = exported_metric_names()
    assert "stream_learner_events_consumed_total" in names  # counter
    assert "stream_learner_train_step_duration_seconds_bucket" in names  # histogram
    assert "stream_learner_active" in names  # gauge
    assert "stream_learner_events_consumed" not in names


@pytest.mark.parametrize("where,text", list(_metric_texts()), ids=lambda v: v if "\n" not in v else "")
def test_every_metric_named_is_exported(where: str, text: str) -> None:
    used = set(METRIC_RE.findall(text))
    unknown = sorted(used - exported_metric_names())
    assert not unknown, f"{where} names metrics that stream_learner.metrics does not export: {unknown}"


def test_recorded_series_used_are_defined() -> None:
    defined = {r["record"] for r in alert_rules() if "record" in r}
    assert defined, "alerts.yml has recording rules"
    for where, text in _metric_texts():
        unknown = sorted(set(RECORDED_RE.findall(text)) - defined)
        assert not unknown, f"{where} uses recorded series no rule records: {unknown}"


def test_dashboard_shows_the_metrics_operators_need() -> None:
    used = {name for expr in dashboard_exprs() for name in METRIC_RE.findall(expr)}
    missing = sorted(DASHBOARD_METRICS - used)
    assert not missing, f"the dashboard has no panel for {missing}"


# -- alerts ----------------------------------------------------------------------------------------
def test_every_alert_has_severity_and_runbook_annotations() -> None:
    anchors = heading_anchors(OPERATIONS.read_text())
    alerts = [r for r in alert_rules() if "alert" in r]
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names)), "alert names are unique"
    assert set(names) >= EXPECTED_ALERTS
    for alert in alerts:
        name, annotations = alert["alert"], alert.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key, "").strip(), f"{name} has no {key} annotation"
        assert alert.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page.endswith("docs/operations.md"), f"{name}: runbook_url {annotations['runbook_url']}"
        assert anchor in anchors, f"{name}: docs/operations.md has no heading #{anchor}"
        assert alert["expr"].strip()


def test_alerts_of_model_gauges_read_the_active_instance_only() -> None:
    """The standby exports 0 for loss, AUC and freshness; those gauges must be filtered to the
    instance holding the lease (directly or through a recording rule)."""
    records = {r["record"]: r["expr"] for r in alert_rules() if "record" in r}
    for rule in alert_rules():
        expr = rule["expr"]
        for gauge in ("validation_auc", "validation_loss", "model_freshness_seconds", "train_loss"):
            if f"stream_learner_{gauge}" in expr:
                assert "stream_learner_active == 1" in expr, rule.get("record") or rule.get("alert")
    assert any("stream_learner_active == 1" in e for e in records.values())


# -- environment variables and settings ------------------------------------------------------------
def _plain_env_names() -> set[str]:
    """STREAM_LEARNER_* variables that are not settings: CLI flags, the local broker's script."""
    sources = [*sorted((REPO / "stream_learner").rglob("*.py")), DEPLOY / "kafka" / "kafka.sh"]
    return {name for path in sources for name in ENV_RE.findall(path.read_text())}


def _deploy_env_names() -> dict[str, set[str]]:
    files = [
        COMPOSE,
        DOCKERFILE,
        DEPLOY / "README.md",
        OPERATIONS,
        *sorted(K8S.rglob("*.yaml")),
        *sorted(DEPLOY.rglob("*.toml")),
    ]
    return {str(p.relative_to(REPO)): set(ENV_RE.findall(p.read_text())) for p in files if p.exists()}


def test_every_settings_variable_in_the_manifests_names_a_setting() -> None:
    plain = _plain_env_names()
    seen = set()
    for where, names in _deploy_env_names().items():
        for name in sorted(names):
            seen.add(name)
            if config.ENV_DELIMITER in name:
                problems = config._env_name_problems({name: "x"})
                assert not problems, f"{where}: {name} names no setting: {problems}"
            else:
                assert name in plain, f"{where}: {name} is read by nothing in stream_learner/"
    assert "STREAM_LEARNER_KAFKA__SASL_PASSWORD" in seen
    assert "STREAM_LEARNER_METRICS__HOST" in seen


def test_a_misspelt_variable_would_be_caught() -> None:
    problems = config._env_name_problems({"STREAM_LEARNER_KAFKA__SASL_PASWORD": "x"})
    assert [setting for setting, _ in problems] == ["kafka.sasl_pasword"]


def test_compose_learner_toml_loads_with_the_compose_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    learner = service("learner")
    env = {k: v for k, v in dockerfile_env().items() if k.startswith(config.ENV_PREFIX)}
    env.update({k: str(v) for k, v in learner.get("environment", {}).items() if "__" in k})
    mounts = {v.split(":")[1]: v.split(":")[0] for v in learner["volumes"]}
    toml = (DEPLOY / mounts[CONTAINER_CONFIG]).resolve()
    assert toml == DEPLOY / "compose" / "learner.toml"
    settings = load_with_env(toml, env, clean_env)

    assert settings.metrics.host == "0.0.0.0"
    host, _, port = settings.kafka.bootstrap_servers.partition(":")
    kafka_env = service("kafka")["environment"]
    assert host in compose()["services"]
    assert f"PLAINTEXT://{host}:{port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert f"--topic={settings.input.topic}" in service("topic-init")["command"]
    assert any(p.endswith(f":{settings.metrics.port}") for p in learner["ports"])
    # The broker takes the largest snapshot chunk and the longest transaction the learner uses.
    topic_max = int(snapshot_topic_config(settings)["max.message.bytes"])
    assert int(kafka_env["KAFKA_MESSAGE_MAX_BYTES"]) >= topic_max
    assert int(kafka_env["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= topic_max
    assert int(kafka_env["KAFKA_TRANSACTION_MAX_TIMEOUT_MS"]) >= settings.delivery.transaction_timeout_ms

    prom = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "stream-learner")
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["learner"] and sd["port"] == settings.metrics.port
    model = next(r for r in job["relabel_configs"] if r.get("target_label") == "model")
    assert model["replacement"] == settings.model.name


def test_k8s_configmap_loads_with_the_deployment_environment(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    configmap = k8s_object("ConfigMap")
    secret = k8s_object("Secret", K8S / "examples")
    container = learner_container()
    env: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"], f"the example Secret lacks key {ref['key']}"
            env[var["name"]] = secret["stringData"][ref["key"]]
    mount = next(m for m in container["volumeMounts"] if CONTAINER_CONFIG.startswith(m["mountPath"]))
    volume = next(
        v
        for v in k8s_object("Deployment")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == mount["name"]
    )
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    filename = Path(CONTAINER_CONFIG).relative_to(mount["mountPath"]).as_posix()
    path = tmp_path / "learner.toml"
    path.write_text(configmap["data"][filename])
    settings = load_with_env(path, env, clean_env)

    assert settings.metrics.host == "0.0.0.0"
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == secret["stringData"]["password"]
    assert settings.kafka.security_protocol.startswith("SASL")
    template = k8s_object("Deployment")["spec"]["template"]
    assert template["metadata"]["labels"][LABEL_MODEL] == settings.model.name
    annotations = template["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.metrics.port
    metrics_port = next(p for p in container["ports"] if p["name"] == "metrics")
    assert metrics_port["containerPort"] == settings.metrics.port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probe_port(container, probe) == settings.metrics.port, probe


def test_secrets_never_sit_in_a_configmap_or_a_plain_value() -> None:
    def keys(table: dict[str, Any], prefix: str = "") -> Iterator[str]:
        for key, value in table.items():
            yield prefix + key
            if isinstance(value, dict):
                yield from keys(value, f"{prefix}{key}.")

    for configmap in (o for o in k8s_objects() if o["kind"] == "ConfigMap"):
        for name, text in configmap["data"].items():
            if name.endswith(".toml"):
                secretive = [k for k in keys(tomllib.loads(text)) if re.search("password|secret", k)]
                assert not secretive, f"ConfigMap {name} sets {secretive}"
    assert not [o for o in k8s_objects() if o["kind"] == "Secret"], "only examples/ holds a Secret"
    for var in learner_container()["env"]:
        if re.search("PASSWORD|SECRET|TOKEN", var["name"]):
            assert "secretKeyRef" in var.get("valueFrom", {}), f"{var['name']} must come from a Secret"
    for name, svc in compose()["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET|TOKEN", key):
                assert str(value).startswith("${"), f"compose {name}: {key} must come from the environment"


# -- Dockerfile ------------------------------------------------------------------------------------
def test_dockerfile_installs_pinned_and_runs_the_learner_as_non_root() -> None:
    every = dockerfile_instructions()
    args = {k: v for kw, a in every if kw == "ARG" and "=" in a for k, _, v in [a.partition("=")]}
    stages = dockerfile_stages()
    bases = [a.split()[0] for kw, a in every if kw == "FROM" and a.split()[0] not in stages]
    assert bases
    for base in bases:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert resolved.startswith("python:3.11-slim"), base
    assert list(stages)[-1] == "learner"  # the default target: `docker build` without --target
    instructions = image_instructions("learner")
    built = image_instructions(next(a.split("=")[1].split()[0] for kw, a in instructions if kw == "COPY"))
    runs = " ".join(a for kw, a in built if kw == "RUN")
    assert re.search(r"pip install[^&;]*(-c|--constraint)[ =]constraints\.txt '\.\[train\]'", runs)
    copies = [a.split() for kw, a in built if kw == "COPY" and "--from" not in a]
    assert any("constraints.txt" in c[:-1] for c in copies)

    users = [a for kw, a in instructions if kw == "USER"]
    assert users, "the image sets a USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"} and user.isdigit(), "numeric non-root user (runAsNonRoot)"
    pod_security = k8s_object("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] == int(user)

    entrypoint = json.loads(next(a for kw, a in instructions if kw == "ENTRYPOINT"))
    cmd = json.loads(next(a for kw, a in instructions if kw == "CMD"))
    command = entrypoint + cmd
    assert command[command.index("stream-learner") :] == [
        "stream-learner",
        "run",
        "--config",
        CONTAINER_CONFIG,
    ]
    assert learner_container()["args"] == cmd
    assert service("learner")["command"] == cmd

    exposed = [int(p) for kw, a in instructions if kw == "EXPOSE" for p in a.split()]
    assert MetricsSettings().port in exposed
    healthcheck = next(a for kw, a in instructions if kw == "HEALTHCHECK")
    assert "/healthz" in healthcheck and "/readyz" not in healthcheck
    assert dockerfile_env().get("STREAM_LEARNER_METRICS__HOST") == "0.0.0.0"


def test_the_serving_image_has_no_torch_and_runs_the_scoring_service() -> None:
    instructions = image_instructions("serve")
    (source,) = [a.split()[0].removeprefix("--from=") for kw, a in instructions if kw == "COPY"]
    runs = " ".join(a for kw, a in image_instructions(source) if kw == "RUN")
    assert re.search(r"pip install -c constraints\.txt '\.\[serve\]'", runs) and "[train]" not in runs
    assert "! /opt/stream-learner/bin/pip list 2>/dev/null | grep -qiE '^(torch|triton) |^nvidia-'" in runs
    assert "stream-learner serve --help" in runs  # the CLI runs without torch

    users = [a for kw, a in instructions if kw == "USER"]
    assert users and users[-1] == "10001:10001"
    entrypoint = json.loads(next(a for kw, a in instructions if kw == "ENTRYPOINT"))
    cmd = json.loads(next(a for kw, a in instructions if kw == "CMD" and a.startswith("[")))
    command = entrypoint + cmd
    assert command[command.index("stream-learner") :] == [
        "stream-learner",
        "serve",
        "--config",
        CONTAINER_CONFIG,
    ]
    serve = parse(["serve"])
    assert [int(a) for kw, a in instructions if kw == "EXPOSE"] == [serve.port]
    assert dockerfile_env("serve")["STREAM_LEARNER_SERVE_HOST"] == "0.0.0.0"
    healthcheck = next(a for kw, a in instructions if kw == "HEALTHCHECK")
    assert "/healthz" in healthcheck and "STREAM_LEARNER_SERVE_PORT" in healthcheck


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for heavy in (".venv", ".git", ".cache", "tests", "benchmarks", ".cache/kafka/lib"):
        assert dockerignored(heavy, patterns), f"{heavy} should not be sent to the build"
    for kw, a in dockerfile_instructions():
        if kw == "COPY" and "--from" not in a:
            for source in a.split()[:-1]:
                assert (REPO / source).exists(), source
                assert not dockerignored(source, patterns), f"COPY {source} is excluded by .dockerignore"
    assert dockerignored("stream_learner/__pycache__", patterns)


# -- compose ---------------------------------------------------------------------------------------
def test_compose_services_and_broker() -> None:
    services = compose()["services"]
    assert {"kafka", "topic-init", "learner", "producer", "prometheus", "grafana"} <= set(services)
    kafka = services["kafka"]
    assert re.match(r"apache/kafka:4\.", interpolate(kafka["image"]))
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert int(env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == 1
    assert int(env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == 1
    assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 1
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) == 16 << 20
    assert services["topic-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("learner", "producer"):
        assert services[name]["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
        build = services[name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == REPO and (context / build["dockerfile"]).resolve() == DOCKERFILE
    producer = services["producer"]["command"]
    assert producer[:2] == ["produce", "synthetic"] and f"--config={CONTAINER_CONFIG}" in producer
    assert services["learner"]["deploy"]["replicas"] == 2, "one active and one standby"


def test_compose_bind_mounts_exist_and_wire_prometheus_and_grafana() -> None:
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    prometheus = service("prometheus")
    config_file = next(a for a in prometheus["command"] if a.startswith("--config.file=")).split("=", 1)[1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"] if v.startswith(".")}
    assert mounts[config_file] == "./prometheus/prometheus.yml"
    prom = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for rules in prom["rule_files"]:
        container_path = (Path(config_file).parent / rules).as_posix()
        assert (DEPLOY / mounts[container_path]).resolve() == (PROMETHEUS / rules).resolve()

    grafana = {v.split(":")[1]: v.split(":")[0] for v in service("grafana")["volumes"] if v.startswith(".")}
    assert grafana["/etc/grafana/provisioning"] == "./grafana/provisioning"
    dashboard_target = next(t for t, s in grafana.items() if s == "./grafana/dashboard.json")
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/stream-learner.yaml").read_text())[
        "providers"
    ][0]
    assert Path(dashboard_target).parent.as_posix() == provider["options"]["path"]
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    url = datasource["datasources"][0]["url"]
    assert url == "http://prometheus:9090" and "prometheus" in compose()["services"]


def test_compose_checks_the_learners_health_on_its_metrics_port() -> None:
    learner = service("learner")
    check = " ".join(learner["healthcheck"]["test"])
    assert "/healthz" in check and "/readyz" not in check  # a standby is healthy, not ready
    port = int(re.search(r"127\.0\.0\.1:(\d+)/healthz", check).group(1))
    assert f"{port}" == learner["ports"][0].rsplit(":", 1)[1] == str(MetricsSettings().port)
    assert learner["restart"] in {"always", "unless-stopped", "on-failure"}  # exits come back


def test_stop_grace_covers_the_final_snapshot() -> None:
    needed = shutdown_timeout() + 30
    assert parse_duration(service("learner")["stop_grace_period"]) >= needed
    spec = k8s_object("Deployment")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= needed


# -- Kubernetes ------------------------------------------------------------------------------------
def test_k8s_manifests_are_namespace_agnostic_and_consistent() -> None:
    objects = k8s_objects()
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} <= {o["kind"] for o in objects}
    for obj in objects:
        assert "namespace" not in obj["metadata"], f"{obj['kind']} {obj['metadata']['name']} sets a namespace"
    deployment = k8s_object("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        k8s_object("Service")["spec"]["selector"],
        k8s_object("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    assert deployment["spec"]["replicas"] == 2, "one active and one warm standby"
    resources = learner_container()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]


def test_k8s_probes_use_the_health_endpoints() -> None:
    deployment = k8s_object("Deployment")
    container = learner_container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    readiness = container["readinessProbe"]["httpGet"]["path"]
    assert readiness in {"/healthz", "/readyz"}
    if deployment["spec"]["replicas"] > 1:
        # Only the lease holder answers /readyz with 200: a standby would never be Ready, and
        # rollouts and drains would wait for it forever.
        assert readiness != "/readyz"


def test_k8s_scrape_config_matches_the_pod_labels() -> None:
    scrape = yaml.safe_load((PROMETHEUS / "kubernetes-scrape.yml").read_text())["scrape_configs"][0]
    labels = k8s_object("Deployment")["spec"]["template"]["metadata"]["labels"]

    def meta(label: str) -> str:
        return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", label)

    keep = next(r for r in scrape["relabel_configs"] if r["source_labels"] == [meta(LABEL_APP)])
    assert keep["action"] == "keep" and re.fullmatch(keep["regex"], labels[LABEL_APP])
    model = next(r for r in scrape["relabel_configs"] if r.get("target_label") == "model")
    assert model["source_labels"] == [meta(LABEL_MODEL)] and LABEL_MODEL in labels


# -- Grafana ---------------------------------------------------------------------------------------
def test_dashboard_layout_and_datasource() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells.get((x, y))}"
                cells[(x, y)] = panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]


# -- promtool --------------------------------------------------------------------------------------
def promtool() -> str:
    """$PROMTOOL, else promtool on PATH, else Debian's (deploy/prometheus/promtool.sh). In CI a missing
    promtool fails the test instead of skipping it."""
    tool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if tool:
        return tool
    fetch = subprocess.run(
        [str(PROMETHEUS / "promtool.sh")], capture_output=True, text=True, timeout=300, check=False
    )
    if fetch.returncode == 0 and fetch.stdout.strip():
        return fetch.stdout.strip()
    message = f"promtool is not available: {fetch.stderr.strip()[-500:]}"
    if os.environ.get("CI", "").lower() in {"true", "1", "yes"}:
        pytest.fail(message)
    pytest.skip(message)


def run_promtool(*args: str, cwd: Path = PROMETHEUS) -> None:
    proc = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_checks_config_and_rules() -> None:
    run_promtool("check", "config", "prometheus.yml")
    run_promtool("check", "rules", "alerts.yml")


def test_promtool_alert_unit_tests() -> None:
    run_promtool("test", "rules", "alerts_test.yml")


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    substitutions = {"$__rate_interval": "1m", "$__interval": "1m", "$model": ".*"}
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        if expr.startswith("label_values("):
            expr = re.match(r"label_values\((\w+)", expr).group(1)  # type: ignore[union-attr]
        assert "$" not in expr, f"unsubstituted variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool("check", "rules", str(path), cwd=tmp_path)


# -- Kubernetes: the distributed job (deploy/k8s/distributed) --------------------------------------
DIST = K8S / "distributed"


def _torchrun_flags(container: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """torchrun's --flag=value options, and the program after them."""
    argv = [*container["command"], *container["args"]]
    assert argv[-len(container["args"]) - 2 :][:2] == ["-m", "torch.distributed.run"]
    args = container["args"]
    program = args.index("-m")
    flags = dict(a.removeprefix("--").split("=", 1) for a in args[:program])
    return flags, args[program:]


def test_k8s_distributed_job_rendezvouses_through_pod_0_of_its_headless_service(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The StatefulSet's pods run torchrun's agent, meet at pod 0's rendezvous store by its stable
    name in the headless Service, form one job of replicas x nproc-per-node ranks and run the
    learner with the ConfigMap's settings, which a distributed job supports."""
    objects = k8s_objects(DIST)
    assert {o["kind"] for o in objects} == {"ConfigMap", "Service", "StatefulSet"}
    assert all("namespace" not in o["metadata"] for o in objects)
    sts, svc, configmap = (k8s_object(kind, DIST) for kind in ("StatefulSet", "Service", "ConfigMap"))
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert spec["serviceName"] == svc["metadata"]["name"]
    # OrderedReady would wait for pod 0 to be Ready, which no rank is before every rank joined
    assert spec["podManagementPolicy"] == "Parallel"

    (container,) = pod["containers"]
    flags, program = _torchrun_flags(container)
    assert int(flags["nnodes"]) == spec["replicas"] >= 2
    assert int(flags["nproc-per-node"]) >= 1 and int(flags["max-restarts"]) >= 1
    assert flags["rdzv-backend"] == "c10d"
    host, _, port = flags["rdzv-endpoint"].partition(":")
    assert host == f"{sts['metadata']['name']}-0.{svc['metadata']['name']}"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(port) == ports["rendezvous"]
    assert any(p["port"] == int(port) for p in svc["spec"]["ports"])
    assert program[:4] == ["-m", "stream_learner", "run", "--config"]
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"  # pytorch/pytorch#135712

    mount = next(m for m in container["volumeMounts"] if program[4].startswith(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    path = tmp_path / "learner.toml"
    path.write_text(configmap["data"][Path(program[4]).relative_to(mount["mountPath"]).as_posix()])
    plain = {k: v for k, v in env.items() if k.startswith(config.ENV_PREFIX) and v is not None}
    settings = load_with_env(path, {**plain, "STREAM_LEARNER_KAFKA__SASL_PASSWORD": "x"}, clean_env)
    check_settings(settings)
    assert settings.metrics.host == "0.0.0.0"
    assert (
        ports["metrics"]
        == settings.metrics.port
        == int(spec["template"]["metadata"]["annotations"]["prometheus.io/port"])
    )
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
        assert probe_port(container, probe) == settings.metrics.port, probe
    # torchrun kills its ranks 30 s after passing SIGTERM on: the final snapshot must fit before
    assert settings.delivery.shutdown_timeout_seconds < 30 < pod["terminationGracePeriodSeconds"]
    for var in container["env"]:
        if re.search("PASSWORD|SECRET|TOKEN", var["name"]):
            assert "secretKeyRef" in var.get("valueFrom", {}), f"{var['name']} must come from a Secret"
    assert not re.search(r"(?m)^\s*\w*(password|secret)\w*\s*=", configmap["data"]["learner.toml"])
