"""Objects for operators a cluster may run: the Prometheus Operator's ServiceMonitor, and
KServe's ServingRuntime with an InferenceService that uses the Baton image as its V2
predictor (KServe sets ``protocolVersion`` on a predictor's ``model``, which names the
ServingRuntime that holds the image: a custom ``containers`` predictor cannot declare one).
"""

from __future__ import annotations

from baton.deploy.kubernetes import HTTP_PORT, KubernetesSpec, Object, container, pod_volumes

MODEL_FORMAT = "baton"


def service_monitor(spec: KubernetesSpec) -> Object:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": spec.metadata(),
            "spec": {"selector": {"matchLabels": spec.selector()},
                     "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}]}}


def serving_runtime(spec: KubernetesSpec) -> Object:
    """The Baton image as a KServe runtime: KServe requires its container to be called
    ``kserve-container`` and routes V2 requests to its first port."""
    c = container(spec, name="kserve-container")
    c["ports"] = [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        c[probe]["httpGet"]["port"] = HTTP_PORT
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
            "metadata": spec.metadata(),
            "spec": {"supportedModelFormats": [{"name": MODEL_FORMAT, "version": "1",
                                                "autoSelect": False}],
                     "protocolVersions": ["v2"],
                     "containers": [c],
                     "volumes": pod_volumes(spec)}}


def inference_service(spec: KubernetesSpec) -> Object:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": spec.metadata(annotations={"serving.kserve.io/deploymentMode":
                                                   "RawDeployment"}),
            "spec": {"predictor": {
                "minReplicas": spec.options.min_replicas, "maxReplicas": spec.options.max_replicas,
                "automountServiceAccountToken": False,
                "securityContext": spec.security_context(pod=True),
                "model": {"modelFormat": {"name": MODEL_FORMAT, "version": "1"},
                          "runtime": spec.app, "protocolVersion": "v2"}}}}
