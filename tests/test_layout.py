"""The layout rule (docs/architecture.md), checked on the source: the library (countclip/ and
countclip/data/) never imports countclip.world or countclip.jobs; world/ never imports jobs/; only
tracking and pyfunc import MLflow; modules outside jobs/ stay under 400 lines; the map names every module."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "countclip"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement anywhere in the file names (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def layer(name: str) -> str:
    if name.startswith("countclip.jobs") or name == "countclip.cli":
        return "top"
    if name.startswith("countclip.world"):
        return "world"
    return "library"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_no_module_imports_a_layer_above_it(path):
    here = layer(module_name(path))
    above = {"library": ("countclip.world", "countclip.jobs", "countclip.cli"),
             "world": ("countclip.jobs", "countclip.cli"), "top": ()}[here]
    bad = sorted(n for n in imported_modules(path) if n.startswith(above))
    assert not bad, f"{module_name(path)} ({here}) imports {bad}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_mlflow_and_boto3_have_one_home_each(path):
    name = module_name(path)
    imports = imported_modules(path)
    if any(n == "mlflow" or n.startswith("mlflow.") for n in imports):
        assert name in ("countclip.tracking", "countclip.pyfunc"), f"{name} imports MLflow"
    if any(n.startswith(("boto3", "botocore")) for n in imports):
        assert name in ("countclip.storage", "countclip.data.fetch"), f"{name} imports boto3"


@pytest.mark.parametrize("path", [p for p in MODULES if "jobs" not in p.parts], ids=module_name)
def test_library_and_world_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= 400, f"{module_name(path)} has {lines} lines"


def test_the_architecture_map_names_every_module():
    text = ARCHITECTURE.read_text()
    missing = [module_name(p) for p in MODULES if p.name != "__init__.py"
               and f"`{p.relative_to(PACKAGE).as_posix()}`" not in text]
    assert not missing, f"docs/architecture.md does not name {missing}"
