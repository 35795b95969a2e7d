"""The core Kubernetes objects for a Baton engine: ConfigMap, Deployment, Service,
HorizontalPodAutoscaler, PodDisruptionBudget.

Secure by default: the pod runs as a numeric non-root user with a read-only root filesystem,
no capabilities, no privilege escalation and the runtime's default seccomp profile; the
paths the engine writes are emptyDirs. Tokens are never in the manifests: the Deployment
references Secrets that IT creates (their names are in ``KubernetesSpec``). Settings are
``BATON_*`` variables in the ConfigMap, read by the engine as it reads them anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton.deploy.sizing import PROBE_PERIOD_S, Sizing
from baton.deploy.source import DeployError, Identity, ImageInfo
from baton.image.layout import HOME, PORT, USER

HTTP_PORT, METRICS_PORT = PORT, 9100
#: The user the image runs as, when the image says nothing we can read (``--image REF``):
#: runAsNonRoot needs a number to verify.
DEFAULT_USER = USER
TOKENS_MOUNT = "/var/run/secrets/baton"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")

Object = dict[str, Any]


@dataclass(frozen=True)
class DeployOptions:
    """What the operator chose; every field has the default ``baton deploy`` uses."""

    #: The image reference the cluster pulls (default: the one ``baton image`` built).
    image: str = ""
    #: The ``baton check`` report to size from (default: a check run now, for a bundle).
    check_report: Path | None = None
    #: Object names; default: the bundle's name (``baton-STAGE`` when following a registry).
    name: str = ""
    namespace: str = ""
    workers: int = 1
    worker_threads: int = 1
    min_replicas: int = 2
    max_replicas: int = 6
    #: Follow this registry's ``stage`` instead of serving the image's bundle.
    registry: str = ""
    stage: str = "production"
    #: Secret with the engine's token file (key ``tokens.toml``), or with the registry's
    #: token and public key (keys ``token`` and ``registry-key``) when following a registry.
    secret: str = ""
    service_monitor: bool = False
    kserve: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KubernetesSpec:
    """What ``baton deploy kubernetes`` writes manifests for: the operator's options with
    what was resolved from them."""

    #: The bundle served (for a registry-following engine: the one the figures came from).
    identity: Identity
    #: The image reference the cluster pulls.
    image: str
    sizing: Sizing
    #: Annotations saying where each figure came from.
    provenance: dict[str, str]
    options: DeployOptions
    image_info: ImageInfo | None = None

    @property
    def app(self) -> str:
        o = self.options
        return object_name(o.name, self.identity.name, o.registry, o.stage)

    @property
    def secret_name(self) -> str:
        o = self.options
        return o.secret or f"{self.app}-{'registry' if o.registry else 'tokens'}"

    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.app,
                "app.kubernetes.io/instance": self.app,
                "app.kubernetes.io/version": self.identity.version,
                "app.kubernetes.io/component": "model-server",
                "app.kubernetes.io/managed-by": "baton"}

    def selector(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.app, "app.kubernetes.io/instance": self.app}

    def metadata(self, suffix: str = "", **extra: Any) -> Object:
        meta: Object = {"name": self.app + suffix}
        if self.options.namespace:
            meta["namespace"] = self.options.namespace
        meta["labels"] = self.labels()
        meta.update(extra)
        return meta

    def user(self) -> tuple[int, int]:
        """The image's numeric user and group (``USER 10001:0``); the default for an image
        that names none, or names root, or names a user by name only."""
        for declared in (self.image_info.user if self.image_info else "", DEFAULT_USER):
            uid, _, gid = declared.partition(":")
            if uid.isdigit() and int(uid) != 0:
                return int(uid), int(gid) if gid.isdigit() else int(uid)
        raise AssertionError("DEFAULT_USER is numeric and not root")

    def security_context(self, pod: bool = False) -> Object:
        uid, gid = self.user()
        ctx: Object = {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid}
        if pod:
            ctx["fsGroup"] = gid
        else:
            ctx |= {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                    "privileged": False, "capabilities": {"drop": ["ALL"]}}
        ctx["seccompProfile"] = {"type": "RuntimeDefault"}
        return ctx


def object_name(name: str, bundle: str, registry: str, stage: str) -> str:
    """The objects' name: ``name``, else the bundle's (``baton-STAGE`` for a registry)."""
    name = name or (f"baton-{stage}" if registry else bundle)
    app = name.lower().replace("_", "-").replace(".", "-")
    if not _DNS_LABEL.match(app):
        raise DeployError(f"{name!r} cannot name Kubernetes objects (lower-case letters, "
                          "digits and '-', at most 63): pass --name", code="INVALID_NAME",
                          details={"name": name})
    return app


def config_map(spec: KubernetesSpec) -> Object:
    o = spec.options
    data = {"BATON_HOST": "0.0.0.0", "BATON_PORT": str(HTTP_PORT),
            "BATON_METRICS_PORT": str(METRICS_PORT), "BATON_WORKERS": str(o.workers),
            "BATON_WORKER_THREADS": str(o.worker_threads), "BATON_LOG_LEVEL": "info"}
    if o.registry:
        # serve's --stage, through the image's entrypoint (BATON_SERVE_<OPTION>)
        data |= {"BATON_REGISTRY": o.registry, "BATON_SERVE_STAGE": o.stage}
    else:
        data["BATON_TOKENS_FILE"] = f"{TOKENS_MOUNT}/tokens.toml"
    data |= o.extra_env
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": spec.metadata("-settings"),
            "data": dict(sorted(data.items()))}


def container(spec: KubernetesSpec, name: str = "engine") -> Object:
    """The engine's container, shared by the Deployment and KServe's ServingRuntime."""
    c: Object = {
        "name": name, "image": spec.image, "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": f"{spec.app}-settings"}}],
    }
    if spec.options.registry:  # the registry's token and public key, by reference only
        c["env"] = [_secret_env("BATON_TOKEN", spec.secret_name, "token"),
                    _secret_env("BATON_REGISTRY_KEY", spec.secret_name, "registry-key")]
    c |= {"resources": spec.sizing.resources(), **probes(spec.sizing),
          "securityContext": spec.security_context(),
          "volumeMounts": [{"name": v, "mountPath": p} for v, p in _writable(spec)]}
    if not spec.options.registry:
        c["volumeMounts"].append({"name": "tokens", "mountPath": TOKENS_MOUNT,
                                  "readOnly": True})
    return c


def _secret_env(var: str, secret: str, key: str) -> Object:
    return {"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def probes(sizing: Sizing) -> Object:
    def get(path: str) -> Object:
        return {"httpGet": {"path": path, "port": "http"}, "timeoutSeconds": 2}

    return {"startupProbe": {**get("/v2/health/ready"), "periodSeconds": PROBE_PERIOD_S,
                             "failureThreshold": sizing.startup_failure_threshold},
            "livenessProbe": {**get("/v2/health/live"), "periodSeconds": 10,
                              "failureThreshold": 3},
            "readinessProbe": {**get("/v2/health/ready"), "periodSeconds": 5,
                               "failureThreshold": 2}}


def _writable(spec: KubernetesSpec) -> list[tuple[str, str]]:
    """emptyDirs where the engine writes: /tmp, BATON_HOME of Baton's images (the image's
    entrypoint links the built-in environments there again), every volume the image declares."""
    paths = ["/tmp", str(HOME), *(spec.image_info.volumes if spec.image_info else ())]
    return [(f"writable-{i}", p) for i, p in enumerate(dict.fromkeys(paths))]


def pod_volumes(spec: KubernetesSpec) -> list[Object]:
    volumes: list[Object] = [{"name": v, "emptyDir": {}} for v, _ in _writable(spec)]
    if not spec.options.registry:
        volumes.append({"name": "tokens", "secret": {"secretName": spec.secret_name,
                                                     "defaultMode": 0o440}})
    return volumes


def deployment(spec: KubernetesSpec) -> Object:
    annotations = {"baton.io/bundle": f"{spec.identity.name} {spec.identity.version}",
                   "baton.io/bundle-digest": spec.identity.digest,
                   "baton.io/identity-source": spec.identity.source}
    if spec.image_info and spec.image_info.image_id:
        annotations["baton.io/image-id"] = spec.image_info.image_id
    annotations |= spec.provenance
    pod_annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                       "prometheus.io/path": "/metrics"}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": spec.metadata(annotations=annotations),
            "spec": {
                "replicas": spec.options.min_replicas,
                "revisionHistoryLimit": 5,
                "selector": {"matchLabels": spec.selector()},
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": spec.labels(), "annotations": pod_annotations},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "terminationGracePeriodSeconds": 45,  # the engine drains for 30 s
                        "securityContext": spec.security_context(pod=True),
                        "containers": [container(spec)],
                        "volumes": pod_volumes(spec)}}}}


def service(spec: KubernetesSpec) -> Object:
    return {"apiVersion": "v1", "kind": "Service", "metadata": spec.metadata(),
            "spec": {"type": "ClusterIP", "selector": spec.selector(),
                     "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http",
                                "protocol": "TCP"},
                               {"name": "metrics", "port": METRICS_PORT,
                                "targetPort": "metrics", "protocol": "TCP"}]}}


def autoscaler(spec: KubernetesSpec) -> Object:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": spec.metadata(),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": spec.app},
                     "minReplicas": spec.options.min_replicas,
                     "maxReplicas": spec.options.max_replicas,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {"type": "Utilization",
                                                   "averageUtilization": 70}}}]}}


def disruption_budget(spec: KubernetesSpec) -> Object:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": spec.metadata(),
            "spec": {"minAvailable": max(1, spec.options.min_replicas - 1),
                     "selector": {"matchLabels": spec.selector()}}}


def core_objects(spec: KubernetesSpec) -> list[Object]:
    return [config_map(spec), deployment(spec), service(spec), autoscaler(spec),
            disruption_budget(spec)]
