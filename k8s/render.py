"""Render a kustomization in Python: the subset of kustomize that k8s/ uses, and nothing else.

    python k8s/render.py k8s/overlays/prod-gpu        # prints the manifests, like `kubectl kustomize`

Supported: ``resources`` (YAML files and kustomization folders), ``namespace``, ``labels`` (``pairs``
added to metadata.labels only), ``images`` (``newName``/``newTag``/``digest``, applied to every
``containers``/``initContainers`` list, as kustomize does, CRDs included) and ``patches`` holding a
JSON 6902 patch (inline or by ``path``) with a ``kind``/``name`` target. Anything else raises
``UnsupportedKustomization`` instead of rendering something kustomize would not, and a patch that
matches no resource is an error (kustomize ignores it silently). Transformers run in kustomize's
order: patches, namespace, labels, images. tests/test_deploy.py compares the output with
`kubectl kustomize` wherever kubectl is installed.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import yaml

API_VERSION = "kustomize.config.k8s.io/v1beta1"
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}


class UnsupportedKustomization(ValueError):
    """The kustomization uses something this renderer does not implement."""


def render(folder: str | Path) -> list[dict]:
    """The manifests ``kustomize build folder`` would produce, as plain dicts."""
    folder = Path(folder)
    path = folder / "kustomization.yaml"
    if not path.is_file():
        raise UnsupportedKustomization(f"{folder}: no kustomization.yaml (other file names are not supported)")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - KUSTOMIZATION_KEYS
    if unknown:
        raise UnsupportedKustomization(f"{path}: unsupported fields {sorted(unknown)}")
    if spec.get("kind", "Kustomization") != "Kustomization" or \
            spec.get("apiVersion", API_VERSION) != API_VERSION:
        raise UnsupportedKustomization(f"{path}: {spec.get('apiVersion')} {spec.get('kind')} (only {API_VERSION})")
    docs: list[dict] = []
    for entry in spec.get("resources", []):
        docs += _load_resource(folder, entry)
    _check_unique(docs, path)
    for patch in spec.get("patches", []):
        _apply_patch(docs, patch, folder)
    if "namespace" in spec:
        _set_namespace(docs, spec["namespace"])
    for label in spec.get("labels", []):
        _add_labels(docs, label, path)
    for image in spec.get("images", []):
        _set_image(docs, image, path)
    return docs


def _load_resource(folder: Path, entry: str) -> list[dict]:
    if "://" in entry or entry.startswith("git@"):
        raise UnsupportedKustomization(f"{folder}: remote resource {entry!r}")
    target = folder / entry
    if target.is_dir():
        return render(target)
    if not target.is_file():
        raise FileNotFoundError(f"{folder}/kustomization.yaml names {entry!r}, which does not exist")
    # A JSON round trip drops YAML anchors' sharing: patching one copy must not change the others.
    return [json.loads(json.dumps(doc)) for doc in yaml.safe_load_all(target.read_text()) if doc]


def _key(doc: dict) -> tuple[str, str, str]:
    meta = doc.get("metadata", {})
    return doc.get("kind", "?"), meta.get("namespace", ""), meta.get("name", "?")


def _check_unique(docs: list[dict], path: Path) -> None:
    seen = set()
    for doc in docs:
        if _key(doc) in seen:
            raise ValueError(f"{path}: {_key(doc)} appears twice")
        seen.add(_key(doc))


def _apply_patch(docs: list[dict], entry: dict, folder: Path) -> None:
    unknown = set(entry) - {"target", "patch", "path"}
    target = entry.get("target") or {}
    if unknown or set(target) - {"kind", "name", "group", "version"} or not target.get("kind"):
        raise UnsupportedKustomization(f"{folder}: patch {entry} (supported: target kind/name/group/version + "
                                       "patch or path)")
    text = entry["patch"] if "patch" in entry else (folder / entry["path"]).read_text()
    ops = yaml.safe_load(text)
    if not isinstance(ops, list):
        raise UnsupportedKustomization(f"{folder}: strategic-merge patch for {target} (only JSON 6902 lists)")
    matched = [d for d in docs if _matches(d, target)]
    if not matched:
        raise ValueError(f"{folder}: patch target {target} matches no resource")
    for doc in matched:
        for op in ops:
            json_patch(doc, op)


def _matches(doc: dict, target: dict) -> bool:
    group, _, version = doc.get("apiVersion", "").rpartition("/")
    return (doc.get("kind") == target["kind"]
            and target.get("name", doc["metadata"]["name"]) == doc["metadata"]["name"]
            and target.get("group", group) == group and target.get("version", version) == version)


def json_patch(doc: dict, op: dict) -> None:
    """Apply one RFC 6902 operation (add, remove, replace, test) in place."""
    kind, path = op.get("op"), op.get("path", "")
    if kind not in {"add", "remove", "replace", "test"}:
        raise UnsupportedKustomization(f"JSON patch op {kind!r} (supported: add, remove, replace, test)")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    if not parts:
        raise UnsupportedKustomization(f"JSON patch on the document root: {op}")
    parent = doc
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(index, copy.deepcopy(op["value"]))
            return
        if not 0 <= index < len(parent):
            raise IndexError(f"JSON patch {op}: index {index} out of range")
    elif kind != "add" and last not in parent:
        raise KeyError(f"JSON patch {op}: {path} does not exist")
    if kind == "test" and parent[int(last) if isinstance(parent, list) else last] != op["value"]:
        raise ValueError(f"JSON patch test failed: {op}")
    if kind == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    elif kind in {"add", "replace"}:
        parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])


def _set_namespace(docs: list[dict], namespace: str) -> None:
    for doc in docs:
        if doc["kind"] == "Namespace":
            if doc["metadata"]["name"] != namespace:
                raise UnsupportedKustomization(f"Namespace {doc['metadata']['name']} under namespace: {namespace}")
        elif doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace


def _add_labels(docs: list[dict], entry: dict, path: Path) -> None:
    if set(entry) - {"pairs", "includeSelectors", "includeTemplates"} or entry.get("includeSelectors") \
            or entry.get("includeTemplates"):
        raise UnsupportedKustomization(f"{path}: labels entry {entry} (only pairs on metadata.labels)")
    for doc in docs:
        doc["metadata"].setdefault("labels", {}).update(entry["pairs"])


def _set_image(docs: list[dict], entry: dict, path: Path) -> None:
    if set(entry) - {"name", "newName", "newTag", "digest"}:
        raise UnsupportedKustomization(f"{path}: images entry {entry}")
    for doc in docs:
        for container in _containers(doc):
            name, tag, digest = split_image(container["image"])
            if name != entry["name"]:
                continue
            name = entry.get("newName", name)
            if "digest" in entry:
                container["image"] = f"{name}@{entry['digest']}"
            else:
                tag = entry.get("newTag", tag)
                container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest and
                                                                           "newTag" not in entry else "")


def _containers(node) -> list[dict]:
    """Every container in a manifest: any ``containers``/``initContainers`` list, at any depth."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += [c for c in value if isinstance(c, dict) and "image" in c]
            else:
                found += _containers(value)
    elif isinstance(node, list):
        for item in node:
            found += _containers(item)
    return found


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference; a registry port is not a tag."""
    rest, _, digest = image.partition("@")
    name, colon, tag = rest.rpartition(":")
    if not colon or "/" in tag:
        return rest, None, digest or None
    return name, tag, digest or None


if __name__ == "__main__":
    print(yaml.safe_dump_all(render(sys.argv[1]), sort_keys=False), end="")
