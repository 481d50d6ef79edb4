"""Offline checks of rendered manifests, the way the API server and the KubeRay operator would judge them.

    python k8s/validate.py k8s/overlays/prod-gpu k8s/overlays/prod-gpu/jobs

Each folder is rendered by the real kustomize (``render``: ``kubectl kustomize <folder>``, the renderer
``kubectl apply -k`` uses), and the documents it prints are checked. Each check takes a list of
manifests (dicts) and returns a list of problems ("Kind/name: where: what"), empty when all is well,
so a test can apply a bad edit in memory and look for the problem it causes:

- ``schema_problems``: core kinds against kubernetes-validate's bundled schemas (strict: unknown fields
  fail), every pod template embedded in a RayCluster/RayJob as a core PodTemplate, and RayCluster/RayJob
  against the KubeRay CRDs' openAPIV3Schema when the CRD files are found (``find_crd_dir``). Unknown
  fields are rejected wherever the CRD does not set x-kubernetes-preserve-unknown-fields, as the API
  server does under kubectl's default strict field validation.
- ``structural_problems``: the RayCluster/RayJob fields this project relies on, with or without CRDs.
- ``kuberay_problems``: the rules KubeRay 1.7 applies when it reconciles (utils/validation.go), which no
  schema expresses (a TTL without shutdownAfterJobFinishes, suspend with clusterSelector, ...).
- ``security_problems``: restricted Pod Security, read-only root filesystem with a writable /tmp,
  requests and limits on every container, pinned image tags.
- ``secret_problems``: no Secret objects, no secret-looking literal env values, no credentials in
  URIs or runtime environments.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33"  # bundled by kubernetes-validate 1.37; KubeRay 1.7 supports it
CRD_FILES = ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml")
RAY_KINDS = {"RayCluster", "RayJob"}
RAY_API_VERSION = "ray.io/v1"
CLUSTER_SELECTOR_KEY = "ray.io/cluster"
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY", re.I)
INLINE_CREDENTIAL = re.compile(r"://[^/\s:@]+:[^/\s@]+@|AKIA[0-9A-Z]{16}")
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# The RayCluster / RayJob spec fields of KubeRay 1.7 (ray.io/v1): enough to catch a misspelt field
# when the CRD files are not at hand.
RAYCLUSTER_FIELDS = {"authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
                     "headGroupSpec", "headServiceAnnotations", "historyServerOptions", "managedBy",
                     "networkPolicy", "rayVersion", "suspend", "tlsOptions", "upgradeStrategy", "workerGroupSpecs"}
WORKER_GROUP_FIELDS = {"groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts",
                       "priority", "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template"}
RAYJOB_FIELDS = {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
                 "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
                 "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes",
                 "submissionMode", "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished"}


RENDER_TIMEOUT_S = 60


class RenderError(RuntimeError):
    """kubectl is missing, or `kubectl kustomize` failed or printed something that is not manifests."""


def render(folder: str | Path, timeout: float = RENDER_TIMEOUT_S) -> list[dict]:
    """The manifests ``kubectl kustomize folder`` prints, as dicts, in kustomize's order."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RenderError("kubectl is not installed (not on PATH): it renders the kustomizations "
                          "(`kubectl kustomize`, kustomize v5); install kubectl 1.32 or newer")
    command = [kubectl, "kustomize", str(folder)]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RenderError(f"`kubectl kustomize {folder}` did not finish in {timeout:g} s") from None
    if out.returncode != 0:
        raise RenderError(f"`kubectl kustomize {folder}` failed: {_kubectl_error(out.stderr)}")
    try:
        docs = [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    except yaml.YAMLError as error:
        raise RenderError(f"`kubectl kustomize {folder}` printed invalid YAML: {error}") from None
    if not all(isinstance(d, dict) for d in docs):
        raise RenderError(f"`kubectl kustomize {folder}` printed something that is not a list of manifests")
    return docs


def _kubectl_error(stderr: str) -> str:
    """kustomize's message without klog's wrapping: `E1203 09:16:30 ... "command failed" err="..."`, or
    `err=<` and tab-indented lines up to ` >` for a message of several lines."""
    match = re.search(r'err="((?:[^"\\]|\\.)*)"', stderr)
    if match:
        try:
            return json.loads(f'"{match.group(1)}"')
        except json.JSONDecodeError:
            pass
    match = re.search(r"err=<\n(.*?)\n >", stderr, re.S)
    if match:
        return "\n".join(line.removeprefix("\t") for line in match.group(1).splitlines()).strip()
    return stderr.strip() or "no message"


def name_of(doc: dict) -> str:
    return f"{doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '?')}"


# ---------------------------------------------------------------------------------------------- schemas
def find_crd_dir(repo: Path) -> Path | None:
    """The KubeRay CRD folder: $KUBERAY_CRDS when set (and only it), else shared/kuberay-crds beside the
    checkout or under /work; None when the CRD files are not there."""
    override = os.environ.get("KUBERAY_CRDS")
    candidates = [override] if override else [repo.parent / "shared/kuberay-crds", "/work/shared/kuberay-crds"]
    for candidate in candidates:
        if all((Path(candidate) / f).is_file() for f in CRD_FILES):
            return Path(candidate)
    return None


def load_crd_schemas(crd_dir: Path) -> dict[tuple[str, str], dict]:
    """{(apiVersion, kind): JSON schema} for every served version of the CRDs in ``crd_dir``."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the files are ~2 MB: C loader when there is one
    schemas = {}
    for file in CRD_FILES:
        crd = yaml.load((crd_dir / file).read_text(), Loader=loader)
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = crd_to_json_schema(version["schema"]["openAPIV3Schema"])
                schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by kuberay_problems
                schemas[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = schema
    return schemas


def crd_to_json_schema(node: dict) -> dict:
    """An OpenAPI v3 structural schema as a Draft 7 JSON schema that rejects unknown fields."""
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: crd_to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = crd_to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [crd_to_json_schema(sub) for sub in value]
        elif not key.startswith("x-kubernetes-") and key != "nullable":
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if out.get("type") == "object" and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False  # the API server prunes (strict validation: rejects) the rest
        if node.get("x-kubernetes-embedded-resource"):
            out.setdefault("properties", {}).update(apiVersion={"type": "string"}, kind={"type": "string"},
                                                    metadata={"type": "object"})
    return out


def embedded_pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod template) for every pod template a RayCluster or RayJob carries."""
    spec = doc.get("spec", {})
    found = []
    if doc.get("kind") == "RayJob":
        if "submitterPodTemplate" in spec:
            found.append(("spec.submitterPodTemplate", spec["submitterPodTemplate"]))
        if "rayClusterSpec" in spec:
            found += [(f"spec.rayClusterSpec.{w}", t) for w, t in _cluster_templates(spec["rayClusterSpec"])]
    elif doc.get("kind") == "RayCluster":
        found += [(f"spec.{w}", t) for w, t in _cluster_templates(spec)]
    return found


def _cluster_templates(spec: dict) -> list[tuple[str, dict]]:
    found = [("headGroupSpec.template", spec.get("headGroupSpec", {}).get("template", {}))]
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        found.append((f"workerGroupSpecs[{i}].template", group.get("template", {})))
    return found


def schema_problems(docs: list[dict], crd_schemas: dict | None) -> list[str]:
    """Core kinds with kubernetes-validate (strict), Ray kinds against the CRDs when given."""
    problems = []
    for doc in docs:
        kind = doc.get("kind")
        if kind in RAY_KINDS:
            for where, template in embedded_pod_templates(doc):
                wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "embedded"},
                           "template": template}
                problems += [f"{name_of(doc)}: {where}: {p}" for p in _core_problems(wrapped)]
            if crd_schemas is not None:
                schema = crd_schemas.get((doc.get("apiVersion"), kind))
                if schema is None:
                    problems.append(f"{name_of(doc)}: no served CRD version {doc.get('apiVersion')}")
                    continue
                for error in jsonschema.Draft7Validator(schema).iter_errors(doc):
                    path = ".".join(str(p) for p in error.absolute_path)
                    problems.append(f"{name_of(doc)}: {path}: {error.message[:300]}")
        else:
            problems += [f"{name_of(doc)}: {p}" for p in _core_problems(doc)]
    return problems


def _core_problems(doc: dict) -> list[str]:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(str(p) for p in error.path)}: {error.message[:300]}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [error.message]
    return []


# ------------------------------------------------------------------------------------- structure, KubeRay
def structural_problems(docs: list[dict]) -> list[str]:
    """The fields the project relies on; meaningful without the CRD files."""
    problems = []
    for doc in docs:
        if doc.get("kind") not in RAY_KINDS:
            continue
        where = name_of(doc)
        if doc.get("apiVersion") != RAY_API_VERSION:
            problems.append(f"{where}: apiVersion {doc.get('apiVersion')} (expected {RAY_API_VERSION})")
        if "status" in doc:
            problems.append(f"{where}: status is the operator's to write")
        spec = doc.get("spec", {})
        if doc["kind"] == "RayCluster":
            problems += [f"{where}: {p}" for p in _cluster_structure(spec)]
            continue
        problems += [f"{where}: spec.{k} is not a RayJob field" for k in sorted(set(spec) - RAYJOB_FIELDS)]
        if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"].strip():
            problems.append(f"{where}: spec.entrypoint must be a command")
        if ("clusterSelector" in spec) == ("rayClusterSpec" in spec):
            problems.append(f"{where}: set exactly one of spec.clusterSelector and spec.rayClusterSpec")
        if "rayClusterSpec" in spec:
            problems += [f"{where}: rayClusterSpec: {p}" for p in _cluster_structure(spec["rayClusterSpec"])]
        if "submitterPodTemplate" in spec:
            problems += [f"{where}: submitterPodTemplate: {p}" for p in _first_container(spec["submitterPodTemplate"])]
    return problems


def _cluster_structure(spec: dict) -> list[str]:
    problems = [f"spec.{k} is not a RayCluster field" for k in sorted(set(spec) - RAYCLUSTER_FIELDS)]
    if not isinstance(spec.get("rayVersion"), str):
        problems.append("spec.rayVersion must name the Ray version of the image")
    problems += [f"headGroupSpec: {p}" for p in _first_container(spec.get("headGroupSpec", {}).get("template"))]
    groups = spec.get("workerGroupSpecs", [])
    names = [g.get("groupName") for g in groups]
    if len(set(names)) != len(names):
        problems.append(f"worker group names repeat: {names}")
    for group in groups:
        label = f"workerGroupSpecs[{group.get('groupName')}]"
        problems += [f"{label}.{k} is not a worker group field" for k in sorted(set(group) - WORKER_GROUP_FIELDS)]
        bounds = [group.get(k) for k in ("minReplicas", "replicas", "maxReplicas")]
        if not all(isinstance(b, int) for b in bounds) or not bounds[0] <= bounds[1] <= bounds[2]:
            problems.append(f"{label}: need integer minReplicas <= replicas <= maxReplicas, got {bounds}")
        problems += [f"{label}: {p}" for p in _first_container(group.get("template"))]
    return problems


def _first_container(template) -> list[str]:
    containers = (template or {}).get("spec", {}).get("containers") or []
    if not containers:
        return ["template.spec.containers is empty"]
    first = containers[0]
    problems = [] if isinstance(first.get("image"), str) and first["image"] else ["the first container has no image"]
    resources = first.get("resources", {})
    return problems + ([] if resources.get("requests") and resources.get("limits") else
                       [f"container {first.get('name')} needs resources.requests and .limits"])


def kuberay_problems(docs: list[dict]) -> list[str]:
    """What KubeRay 1.7 refuses at reconcile time (ray-operator/controllers/ray/utils/validation.go)."""
    problems = []
    for doc in docs:
        if doc.get("kind") not in RAY_KINDS:
            continue
        where, name = name_of(doc), doc.get("metadata", {}).get("name", "")
        longest = 53 if doc["kind"] == "RayCluster" else 47
        if not DNS1035.match(name) or len(name) > longest:
            problems.append(f"{where}: the name must be a DNS-1035 label of at most {longest} characters")
        spec = doc.get("spec", {})
        cluster_spec = spec if doc["kind"] == "RayCluster" else spec.get("rayClusterSpec")
        if cluster_spec:
            problems += [f"{where}: {p}" for p in _cluster_rules(cluster_spec)]
        if doc["kind"] == "RayJob":
            problems += [f"{where}: {p}" for p in _job_rules(spec)]
    return problems


def _cluster_rules(spec: dict) -> list[str]:
    problems = []
    groups = [("head", spec.get("headGroupSpec", {}))] + [(g.get("groupName"), g) for g in spec.get("workerGroupSpecs", [])]
    for label, group in groups:
        params = group.get("rayStartParams", {})
        if group.get("resources") and any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            problems.append(f"group {label}: resources set in both rayStartParams and resources")
        if "labels" in params:
            problems.append(f"group {label}: rayStartParams['labels'] is not supported; use the labels field")
        if spec.get("enableInTreeAutoscaling") and group.get("suspend"):
            problems.append(f"group {label}: cannot be suspended with the autoscaler enabled")
    return problems


def _job_rules(spec: dict) -> list[str]:
    problems = []
    shutdown, ttl = spec.get("shutdownAfterJobFinishes", False), spec.get("ttlSecondsAfterFinished", 0)
    selector, mode = spec.get("clusterSelector"), spec.get("submissionMode", "K8sJobMode")
    if spec.get("suspend") and not shutdown:
        problems.append("a RayJob with shutdownAfterJobFinishes false cannot be suspended")
    if ttl < 0 or (ttl > 0 and not shutdown):
        problems.append("ttlSecondsAfterFinished must be >= 0, and 0 unless shutdownAfterJobFinishes is true")
    if selector:
        if not selector.get(CLUSTER_SELECTOR_KEY):
            problems.append(f"clusterSelector must name the cluster under {CLUSTER_SELECTOR_KEY}")
        if spec.get("suspend"):
            problems.append("the clusterSelector mode does not support suspend")
        if mode == "SidecarMode":
            problems.append("clusterSelector is not supported in SidecarMode")
    if mode == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        problems.append("backoffLimit is incompatible with InteractiveMode")
    if spec.get("activeDeadlineSeconds", 1) <= 0 or spec.get("backoffLimit", 0) < 0:
        problems.append("activeDeadlineSeconds must be positive and backoffLimit >= 0")
    try:
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
    except yaml.YAMLError as error:
        return problems + [f"runtimeEnvYAML is not YAML: {error}"]
    if not isinstance(runtime_env, dict):
        problems.append("runtimeEnvYAML must be a mapping")
    return problems


# ------------------------------------------------------------------------------------- security, secrets
def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod a manifest creates, directly or through an operator."""
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return [("spec.template.spec", doc["spec"]["template"]["spec"])]
    if doc.get("kind") == "Pod":
        return [("spec", doc["spec"])]
    return [(f"{where}.spec", template.get("spec", {})) for where, template in embedded_pod_templates(doc)]


def containers_of(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod.get("containers", [])


def security_problems(docs: list[dict]) -> list[str]:
    """Restricted Pod Security, read-only roots with a writable /tmp, resources, pinned images."""
    problems = []
    for doc in docs:
        for where, pod in pod_specs(doc):
            at = f"{name_of(doc)}: {where}"
            pod_security = pod.get("securityContext", {})
            if pod_security.get("runAsNonRoot") is not True or not pod_security.get("runAsUser"):
                problems.append(f"{at}: securityContext needs runAsNonRoot: true and a non-zero runAsUser")
            if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{at}: securityContext.seccompProfile.type must be RuntimeDefault")
            if any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")) or \
                    any("hostPath" in v for v in pod.get("volumes", [])):
                problems.append(f"{at}: no host namespaces or hostPath volumes")
            for container in containers_of(pod):
                problems += [f"{at}: container {container.get('name')}: {p}" for p in _container_problems(container)]
        autoscaler = doc.get("spec", {}).get("autoscalerOptions") if doc.get("kind") == "RayCluster" else None
        if autoscaler is not None:
            problems += [f"{name_of(doc)}: autoscalerOptions: {p}"
                         for p in _container_problems({"image": _head_image(doc), **autoscaler, "name": "autoscaler",
                                                       "volumeMounts": [{"mountPath": "/tmp"}]})]
    return problems


def _head_image(cluster: dict) -> str:
    """The image KubeRay gives the autoscaler sidecar when autoscalerOptions.image is unset."""
    return cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].get("image", "")


def _container_problems(container: dict) -> list[str]:
    problems = []
    security = container.get("securityContext", {})
    if security.get("privileged") or security.get("allowPrivilegeEscalation") is not False:
        problems.append("must not be privileged and must set allowPrivilegeEscalation: false")
    capabilities = security.get("capabilities", {})
    if "ALL" not in capabilities.get("drop", []) or capabilities.get("add"):
        problems.append("must drop ALL capabilities and add none")
    if security.get("runAsUser") == 0 or security.get("runAsNonRoot") is False:
        problems.append("must not run as root")
    if security.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem must be true")
    elif not any(m.get("mountPath") == "/tmp" for m in container.get("volumeMounts", [])):
        problems.append("a read-only root needs a writable volume on /tmp")
    resources = container.get("resources", {})
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    for key in ("cpu", "memory"):
        if key not in requests or key not in limits:
            problems.append(f"needs requests and limits for {key}")
        elif quantity(limits[key]) < quantity(requests[key]):
            problems.append(f"{key} limit below its request")
    for key in set(requests) | set(limits):
        if "/" in key and requests.get(key) != limits.get(key):
            problems.append(f"extended resource {key}: requests must equal limits")
    image = container.get("image", "")
    if "@" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
        problems.append(f"image {image!r} needs a pinned tag or digest")
    return problems


def quantity(value) -> float:
    """A Kubernetes quantity ("500m", "8Gi", 2) as a number of base units."""
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    if not match or match.group(2) not in {"", *suffixes}:
        raise ValueError(f"cannot read quantity {value!r}")
    return float(match.group(1)) * suffixes.get(match.group(2), 1)


def secret_problems(docs: list[dict]) -> list[str]:
    """No Secret objects, no secret-looking literals in env, ConfigMaps, URIs or runtime environments."""
    problems = []
    for doc in docs:
        where = name_of(doc)
        if doc.get("kind") == "Secret":
            problems.append(f"{where}: Secrets are created by hand (docs/deploy.md), never kept in k8s/")
        if doc.get("kind") == "ConfigMap":
            problems += [f"{where}: key {k} looks secret: use a Secret" for k in doc.get("data", {}) if SECRET_NAME.search(k)]
        for _, pod in pod_specs(doc):
            for container in containers_of(pod):
                for env in container.get("env", []):
                    if SECRET_NAME.search(env.get("name", "")) and "value" in env:
                        problems.append(f"{where}: container {container.get('name')}: env {env['name']} is a literal: "
                                        "use valueFrom.secretKeyRef")
        runtime_env = yaml.safe_load(doc.get("spec", {}).get("runtimeEnvYAML") or "{}") if doc.get("kind") == "RayJob" else {}
        for key in (runtime_env or {}).get("env_vars", {}):
            if SECRET_NAME.search(key):
                problems.append(f"{where}: runtimeEnvYAML sets {key}: credentials come from Secrets in the pod spec")
        problems += [f"{where}: {text[:80]!r} holds a credential" for text in _strings(doc) if INLINE_CREDENTIAL.search(text)]
    return problems


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def all_problems(docs: list[dict], crd_schemas: dict | None) -> list[str]:
    return (schema_problems(docs, crd_schemas) + structural_problems(docs) + kuberay_problems(docs)
            + security_problems(docs) + secret_problems(docs))


def main(folders: list[str]) -> int:
    """Render every folder, then print each problem found ("folder: Kind/name: where: what")."""
    if not folders:
        print("usage: python k8s/validate.py KUSTOMIZATION_FOLDER...", file=sys.stderr)
        return 2
    try:
        rendered = {folder: render(folder) for folder in folders}
    except RenderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    crd_dir = find_crd_dir(Path(__file__).resolve().parents[1])
    print(f"KubeRay CRDs: {crd_dir or 'not found (set KUBERAY_CRDS); Ray kinds get structural checks only'}")
    crd_schemas = load_crd_schemas(crd_dir) if crd_dir else None
    found = [f"{folder}: {p}" for folder, docs in rendered.items() for p in all_problems(docs, crd_schemas)]
    print("\n".join(found) or "no problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
