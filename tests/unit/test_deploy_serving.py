"""The scoring service's deployment files (deploy/k8s/serving, the serving scrape job) against the
command they run and the learner's settings they read."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_learner import config
from stream_learner.cli.parser import parse
from tests.unit.test_deploy import (
    CONTAINER_CONFIG,
    K8S,
    LABEL_APP,
    LABEL_MODEL,
    PROMETHEUS,
    k8s_object,
    k8s_objects,
    load_with_env,
    probe_port,
)

SERVING = K8S / "serving"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No STREAM_LEARNER_* variables of the machine running the tests."""
    for name in list(os.environ):
        if name.upper().startswith(config.ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


def test_k8s_serving_reads_the_learners_configmap_and_probes_readiness(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`stream-learner serve` with the learner's settings file, ready on /readyz (a model served),
    alive on /healthz, on the port its Service, its probes and the scrape annotations name."""
    objects = k8s_objects(SERVING)
    assert {o["kind"] for o in objects} == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    assert all("namespace" not in o["metadata"] for o in objects)
    deployment, svc, hpa = (
        k8s_object(k, SERVING) for k in ("Deployment", "Service", "HorizontalPodAutoscaler")
    )
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert labels[LABEL_APP] != k8s_object("Deployment")["spec"]["template"]["metadata"]["labels"][LABEL_APP]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]

    (container,) = template["spec"]["containers"]
    env = {v["name"]: v.get("value") for v in container["env"]}
    for name, value in env.items():
        clean_env.setenv(name, value or "x")
    args = parse(container["args"])
    assert args.command == "serve" and str(args.config) == CONTAINER_CONFIG and args.host == "0.0.0.0"
    port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
    assert args.port == port == int(template["metadata"]["annotations"]["prometheus.io/port"])
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probe_port(container, probe) == port, probe
    assert container["resources"]["requests"]["cpu"], "the HPA scales on CPU utilisation of the request"
    for var in container["env"]:
        if re.search("PASSWORD|SECRET|TOKEN", var["name"]):
            assert "secretKeyRef" in var.get("valueFrom", {}), f"{var['name']} must come from a Secret"

    mount = next(m for m in container["volumeMounts"] if CONTAINER_CONFIG.startswith(m["mountPath"]))
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
    configmap = k8s_object("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]  # the learner's own settings
    path = tmp_path / "learner.toml"
    path.write_text(configmap["data"][Path(CONTAINER_CONFIG).name])
    settings = load_with_env(path, {"STREAM_LEARNER_KAFKA__SASL_PASSWORD": "x"}, clean_env)
    assert labels[LABEL_MODEL] == settings.model.name


def test_k8s_serving_is_scraped_by_its_own_job_without_a_model_label() -> None:
    """The service labels its series with its model; a target label would rename that one."""
    jobs = yaml.safe_load((PROMETHEUS / "kubernetes-scrape.yml").read_text())["scrape_configs"]
    labels = k8s_object("Deployment", SERVING)["spec"]["template"]["metadata"]["labels"]
    keep = "__meta_kubernetes_pod_label_app_kubernetes_io_name"

    def keeps(job: dict[str, Any]) -> bool:
        rule = next(r for r in job["relabel_configs"] if r["source_labels"] == [keep])
        return rule["action"] == "keep" and re.fullmatch(rule["regex"], labels[LABEL_APP]) is not None

    (job,) = [j for j in jobs if keeps(j)]
    assert all(r.get("target_label") != "model" for r in job["relabel_configs"])
