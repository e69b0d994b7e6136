"""The deployment files (issue 14, part 4) agree with Kubernetes, with each other and with
the server they run.

The Kubernetes manifests are validated against the Kubernetes API's own schemas
(``kubernetes-validate``, strict: an unknown field is an error); the compose file, the
load balancer, Prometheus and the Grafana dashboard are checked against what Vatra
really reads and serves: every ``VATRA_*`` variable they set is one the server reads,
every metric the dashboard plots is one the server exports, every instance is behind
the load balancer and scraped by Prometheus. (No image is built here: that needs a
container engine and the network; docs/deploy.md has the command.)
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES = "1.30.0"  # the oldest release the manifests are written for
SYNC_PORT = 8765


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in documents(K8S / name)]


def by_kind(kind: str, name: str) -> dict[str, Any]:
    [found] = [m for m in manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def settings_variables() -> set[str]:
    """The environment variables the server reads (Settings.from_env and the log format)."""
    source = (ROOT / "sync_server" / "config.py").read_text()
    names = set(re.findall(r'"(VATRA_[A-Z_]+|DATABASE_URL)"', source))
    names.add("VATRA_LOG_FORMAT")  # sync_server/cli/logs.py
    assert {"DATABASE_URL", "VATRA_MASTER_KEY_FILE", "VATRA_PROJECTOR"} <= names
    return names


def test_every_manifest_is_valid_kubernetes() -> None:
    found = manifests()
    assert {m["kind"] for m in found} >= {"Deployment", "Service", "Ingress", "Job", "Secret",
                                          "ConfigMap", "PodDisruptionBudget", "Namespace"}
    listed = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    for m in found:
        kubernetes_validate.validate(m, KUBERNETES, strict=True)


def test_the_validation_would_catch_a_typo() -> None:
    """The check above can fail: a misspelt probe is refused by the schema."""
    broken = copy.deepcopy(by_kind("Deployment", "vatra"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_sync_pods_are_probed_spread_protected_and_unprivileged() -> None:
    deployment = by_kind("Deployment", "vatra")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    [container] = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"][0]["containerPort"] == SYNC_PORT
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == dockerfile_user()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VATRA_PROJECTOR"] == "0"  # the projector has its own Deployment
    for m in manifests():
        for c in containers(m):
            names = {e["name"] for e in c.get("env", [])}
            names |= set(by_kind("ConfigMap", "vatra")["data"])
            assert names <= settings_variables(), (m["metadata"]["name"], names)
    pdb = by_kind("PodDisruptionBudget", "vatra")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    service = by_kind("Service", "vatra")
    assert service["spec"]["selector"].items() <= labels.items()
    backend = by_kind("Ingress", "vatra")["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"]["name"] == "vatra"
    job = by_kind("Job", "vatra-migrate")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    keys = by_kind("Secret", "vatra-keys")["data"]
    config = by_kind("ConfigMap", "vatra")["data"]
    assert Path(config["VATRA_MASTER_KEY_FILE"]).name in keys
    assert Path(config["VATRA_SERVER_KEY_FILE"]).name in keys


def test_every_pod_can_read_its_key_files() -> None:
    """Found in review: the key files were mounted mode 0400, owned by root, and every
    container runs as user 10001, so no Vatra process could read its master key. A
    pod that mounts the keys must give them to its user's group (``fsGroup``) and let
    the group read them."""
    pods = [m for m in manifests() if containers(m)]
    assert len(pods) == 3  # the sync pods, the projector, the migration
    for m in pods:
        spec = m["spec"]["template"]["spec"]
        [keys] = [v for v in spec["volumes"] if v["name"] == "keys"]
        mode = keys["secret"]["defaultMode"]
        context = spec["securityContext"]
        assert context["runAsUser"] == dockerfile_user(), m["metadata"]["name"]
        assert context["fsGroup"] == context["runAsGroup"], m["metadata"]["name"]
        assert mode & 0o040, f"{m['metadata']['name']}: keys not readable by the group"
        assert not mode & 0o007, f"{m['metadata']['name']}: keys readable by anyone"


def containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    spec = manifest.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", []))


def dockerfile_user() -> int:
    text = (DEPLOY / "Dockerfile").read_text()
    [user] = re.findall(r"^USER (\d+)", text, re.M)
    return int(user)


def test_the_image_is_multi_stage_unprivileged_and_health_checked() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert dockerfile_user() != 0
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.M)
    copied = set(re.findall(r"^COPY (\w+) \1$", text, re.M))
    pyproject = (ROOT / "pyproject.toml").read_text()
    packaged = set(re.findall(r'"(\w+)\*"', pyproject))
    assert copied == packaged  # every package the wheel includes, and nothing else
    assert all((ROOT / p).is_dir() for p in copied)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_compose_runs_three_instances_behind_tls_and_a_projector_all_scraped() -> None:
    services = compose()["services"]
    instances = sorted(s for s in services if re.fullmatch(r"vatra-\d", s))
    assert instances == ["vatra-1", "vatra-2", "vatra-3"]
    assert {"postgres", "migrate", "projector", "lb", "prometheus"} <= set(services)
    for name in [*instances, "migrate", "projector"]:
        service = services[name]
        assert set(service["environment"]) <= settings_variables(), name
        assert service["depends_on"], name
    assert services["migrate"]["command"] == ["migrate"]
    assert services["projector"]["environment"]["VATRA_PROJECTOR"] == "1"
    assert all(services[i]["environment"]["VATRA_PROJECTOR"] == "0" for i in instances)
    metrics_port = services["projector"]["command"][services["projector"]["command"]
                                                    .index("--metrics-port") + 1]

    haproxy = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    backends = re.findall(r"^\s*server (\S+) (\S+):(\d+)", haproxy, re.M)
    assert [(n, h, int(p)) for n, h, p in backends] == [(i, i, SYNC_PORT) for i in instances]
    assert re.search(r"bind :\d+ ssl crt ", haproxy)
    assert "timeout tunnel" in haproxy  # WebSocket sessions outlive the HTTP timeouts
    assert "option httpchk GET /readyz" in haproxy
    # The enrollment limiter trusts X-Forwarded-For from the balancer alone, and the
    # balancer replaces the header rather than appending to what a client sent.
    lb_address = services["lb"]["networks"]["default"]["ipv4_address"]
    assert all(services[i]["environment"]["VATRA_TRUSTED_PROXIES"] == lb_address
               for i in instances)
    assert "http-request set-header X-Forwarded-For %[src]" in haproxy
    assert "option forwardfor" not in haproxy
    mounted = " ".join(services["lb"]["volumes"])
    assert "haproxy.cfg" in mounted and "vatra.pem" in mounted

    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"]
               for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"{i}:{SYNC_PORT}" for i in instances} | {f"projector:{metrics_port}"}
    for secret in compose()["secrets"].values():
        assert (DEPLOY / secret["file"]).parent.joinpath(".gitignore").exists()


def exported_metrics() -> set[str]:
    """Every metric family the server and the projector register (importing them)."""
    from prometheus_client import REGISTRY

    import sync_server.app
    import sync_server.cli.projections

    assert sync_server.app
    names = set()
    for family in REGISTRY.collect():  # a labelled family has no sample before its first use
        names.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                    "gauge": ()}.get(family.type, ())
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_the_dashboard_plots_only_metrics_the_server_exports() -> None:
    import json

    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "vatra.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bvatra_[a-z_]+", e)}
    assert len(used) >= 20
    exported = exported_metrics()
    assert used - exported == set()
    assert {"vatra_outbox_frames", "vatra_projection_lag_seconds",
            "vatra_sessions_refused_total"} <= used
