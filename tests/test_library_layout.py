"""The library's layout: stage packages that import downwards only, no import cycle, torch
only where a model runs, and docs whose every `genies.` name and `genies/` path exists."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "genies"

# The stages in import order: a module may import its own stage and the ones before it.
STAGES = ("data", "models", "pipeline", "forward", "methods", "results")
# Modules that must never import torch, and what the CPU-only jobs' entry points import.
TORCH_FREE = (
    "genies.errors",
    "genies.io",
    "genies.seeds",
    "genies.progress",
    "genies.hub",
    "genies.scratch",
    "genies.versions",
    "genies.data.*",
    "genies.models.layout",
    "genies.models.tokens",
    "genies.models.context",
    "genies.pipeline.*",
    "genies.forward.zero_shot",
    "genies.forward.baselines",
    "genies.results.*",
)
CPU_ONLY_SCRIPTS = (
    "materialise",
    "pin_distribution",
    "materialise_distribution",
    "shift_registry",
    "download_data",
    "few_shot_prompts",
    "predict_zero_shot",
    "predict_few_shot",
    "predict_random",
    "predict_dpo",
    "import_published",
    "aggregate",
    "publish_database",
    "cell",
    "report_tables",
    "viewer",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str) -> set[str]:
    """Every genies module `name` imports, at the top or deferred inside a function."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imported_modules(name) for name in MODULES}


def stage(name: str) -> int:
    parts = name.split(".")
    return STAGES.index(parts[1]) + 1 if len(parts) > 1 and parts[1] in STAGES else 0


def test_the_stages_are_packages():
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(STAGES)
    assert all(stage(m) for m in MODULES if m.count(".") > 1)


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name, path):
        state[name] = 1
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_imports_go_downwards_only():
    upward = [
        f"{name} ({STAGES[stage(name) - 1] if stage(name) else 'top level'}) imports {dep}"
        for name, deps in GRAPH.items()
        for dep in sorted(deps)
        if stage(dep) > stage(name)
    ]
    assert not upward, "\n".join(upward)


def test_the_graph_holds_deferred_imports():
    # A cycle must not hide behind an import inside a function.
    deferred = {
        (name, node.module)
        for name, path in MODULES.items()
        for top in ast.parse(path.read_text()).body
        if isinstance(top, (ast.FunctionDef, ast.ClassDef))
        for node in ast.walk(top)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("genies")
    }
    assert deferred
    for name, module in deferred:
        assert (
            module in GRAPH[name]
            or module.rpartition(".")[0] in GRAPH[name]
            or any(dep.startswith(module) for dep in GRAPH[name])
        ), (name, module)


def _expand(patterns) -> list[str]:
    names = []
    for pattern in patterns:
        if pattern.endswith(".*"):
            names += sorted(m for m in MODULES if m.startswith(pattern[:-1]))
        else:
            names.append(pattern)
    return names


def _torch_importers(modules: list[str]) -> list[str]:
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        f"for name in {modules!r}:\n"
        "    __import__(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        print(name); break\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_light_modules_never_import_torch():
    assert _torch_importers(_expand(TORCH_FREE)) == []


def test_cpu_only_jobs_never_import_torch():
    imports = re.compile(r"^from (genies\S*) import", re.M)
    modules = sorted(
        {
            m
            for script in CPU_ONLY_SCRIPTS
            for m in imports.findall((REPO / "workflow_scripts" / f"{script}.py").read_text())
        }
    )
    assert "genies.forward.zero_shot" in modules
    assert _torch_importers(modules) == []


# ------------------------------------------------------------------------------ the docs

# A name or path of this repository, not part of a longer path (`envs/genies.yaml`).
DOTTED = re.compile(r"(?<![\w/.-])genies(?:\.[A-Za-z_]\w*)+")
PATHS = re.compile(r"(?<![\w/.-])genies/[\w/]+(?:\.py|/)")
# Dotted strings that are not names: the Parquet metadata key of run provenance.
NOT_NAMES = {"genies.provenance"}


def documents() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    files += sorted((REPO / "rules").glob("*.smk")) + [REPO / "Snakefile"]
    for folder in ("workflow_scripts", "bench", "genies", "tests"):
        files += sorted(p for p in (REPO / folder).rglob("*.py") if "genies" not in p.parts[-2:-1])
    files += sorted(PACKAGE.rglob("*.py"))
    return sorted(set(files))


def resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        if name in MODULES:
            obj = importlib.import_module(name)
            for attr in parts[cut:]:
                fields = getattr(obj, "__dataclass_fields__", {})
                if attr in fields and not hasattr(obj, attr):
                    return True  # a dataclass field without a default
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


def test_every_genies_name_in_the_docs_exists():
    missing = []
    for path in documents():
        text = path.read_text()
        for dotted in sorted(set(DOTTED.findall(text)) - NOT_NAMES):
            if not resolve(dotted):
                missing.append(f"{path.relative_to(REPO)}: {dotted}")
        for ref in sorted(set(PATHS.findall(text))):
            if not (REPO / ref).exists():
                missing.append(f"{path.relative_to(REPO)}: {ref}")
    assert not missing, "\n".join(missing)


def test_the_names_that_are_not_names():
    from genies.io import PROVENANCE_KEY

    assert NOT_NAMES == {PROVENANCE_KEY.decode()}
