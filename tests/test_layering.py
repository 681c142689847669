"""The package is layered: every import, at module level or inside a function, goes to a lower
floor; no circle; the core (everything below ``methods`` and ``tasks``) imports no task."""

import ast
from pathlib import Path

import diffusionblocks

ROOT = Path(diffusionblocks.__file__).parent

# Floors, lowest first; a module may import only modules on floors below its own.
FLOORS = [
    ["checks", "progress", "memory", "conditioning", "offload", "sampling", "data", "data.images",
     "metrics", "metrics.fid", "models", "tasks",
     "commands"],
    ["noise", "data.text", "checkpoint", "convert"],
    ["blocks", "models.vit"],
    ["models.dit", "models.lm", "training"],
    ["adapters", "parallel"],
    ["__init__", "runs", "report"],
    ["docs"],
    ["methods.family", "methods.units", "methods.noprop"],
    ["methods.local", "methods.cff", "methods.cwcomp"],
    ["methods.ensemble", "methods.shallow", "methods.dblocks", "methods.dblocks_cnn", "methods.e2e_cnn"],
    ["methods.e2e"],
    ["methods"],
    ["tasks.text"],
    ["tasks.judge", "tasks.classify", "tasks.generate", "tasks.mdm"],
    ["tasks.ar"],
    ["tasks.recurrent"],
    ["configs", "hub", "launch"],
    ["bench", "commands.flags"],
    ["commands.train", "commands.inference", "commands.compare", "commands.share", "commands.bench"],
    ["cli"],
    ["__main__"],
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}
ABOVE_CORE = ("tasks", "methods", "configs", "hub", "launch", "bench", "commands", "cli", "__main__")
CORE = [name for name in FLOOR if not name.startswith(ABOVE_CORE)]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (relative imports, anywhere in the file)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" and name != "__init__" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = [*base, *(node.module.split(".") if node.module else [])]
            for alias in node.names:  # `from . import x` may name a module
                sub = ".".join([*target, alias.name])
                found.add(sub if sub in FLOOR else ".".join(target) or "__init__")
    return {m for m in found if m != name}


def all_imports() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(ROOT.rglob("*.py"))}


def test_every_module_has_a_floor():
    assert set(all_imports()) <= set(FLOOR), set(all_imports()) - set(FLOOR)


def test_no_module_imports_one_on_its_floor_or_above():
    upward = [(m, d) for m, deps in all_imports().items() for d in deps if FLOOR[d] >= FLOOR[m]]
    assert not upward, upward


def test_the_core_imports_no_task_and_no_method():
    graph = all_imports()
    for name in CORE:
        assert not {d for d in graph.get(name, ()) if d.startswith(("tasks", "methods"))}, name


def test_validation_helpers_live_on_the_ground_floor():
    assert imports(ROOT / "checks.py") == set() and imports(ROOT / "progress.py") == set()
    assert "training" not in imports(ROOT / "checkpoint.py")
    assert "runs" not in imports(ROOT / "training.py") | imports(ROOT / "noise.py")
