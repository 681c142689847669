"""Build the API reference from the docstrings (pdoc) and check that every public name of the
library's modules is documented.

    python docs/api.py --out docs/api     # HTML; exits 1 naming any undocumented public name

The public modules are the task-independent core, the models and the classification task (its
``init_from`` converts a trained model); the other tasks and the CLI are reached through the
command line and documented there.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

PUBLIC = ["diffusionblocks", *(f"diffusionblocks.{m}" for m in (
    "blocks", "adapters", "conditioning", "convert", "noise", "sampling", "training", "checkpoint",
    "configs", "memory", "offload", "models.vit", "models.dit", "models.lm", "tasks.classify"))]


def _own_doc(cls: type, name: str) -> bool:
    """Whether ``cls.name`` has a docstring of its own or of a base class in this library (not
    torch's generic ``forward`` text)."""
    for base in cls.__mro__:
        member = vars(base).get(name)
        if member is None:
            continue
        if not base.__module__.startswith("diffusionblocks"):
            return False
        doc = (member.fget if isinstance(member, property) else getattr(member, "__func__", member)).__doc__
        if doc:
            return True
    return False


def undocumented(module_name: str) -> list[str]:
    """Public classes, functions, methods and properties defined in ``module_name`` without a
    docstring of their own (a method may take its base class's, if that class is this library's)."""
    module = importlib.import_module(module_name)
    missing = [] if module.__doc__ else [module_name]
    names = getattr(module, "__all__", None) or [k for k in vars(module) if not k.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if module_name != "diffusionblocks" and obj.__module__ != module_name:
            continue  # imported here, checked where it is defined
        if not (obj.__doc__ if inspect.isclass(obj) else inspect.getdoc(obj)):
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(obj):
            members = [k for k, v in vars(obj).items() if not k.startswith("_") and (
                inspect.isfunction(v) or isinstance(v, (property, staticmethod, classmethod)))]
            missing += [f"{module_name}.{name}.{k}" for k in members if not _own_doc(obj, k)]
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/api", help="folder for the HTML (default: docs/api)")
    args = parser.parse_args(argv)
    missing = sorted({m for name in PUBLIC for m in undocumented(name)})
    if missing:
        print("undocumented public names: " + ", ".join(missing), file=sys.stderr)
        return 1
    import pdoc

    pdoc.pdoc(*PUBLIC, output_directory=Path(args.out))
    print(f"API reference for {len(PUBLIC)} modules in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
