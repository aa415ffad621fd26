"""The import rules each package's `__init__` states, checked by walking every module's imports (at any depth,
TYPE_CHECKING blocks included): core/ never imports gradio or demo/, and inside core/ the arrows point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASE = ("core.config", "core.errors", "core.checks")  # what every part of core may use
# each part of core: the other parts it may import (its own modules always)
ALLOWED = {
    "core.model": BASE,
    "core.text": (*BASE, "core.model"),
    "core.work": BASE,
    "core.embeddings": (*BASE, "core.text.token_strings", "core.work"),
    "core.engine": (*BASE, "core.model", "core.text", "core.work"),
    "core.inside": (*BASE, "core.model", "core.text", "core.embeddings", "core.work", "core.engine.base",
                    "core.engine.settings", "core.engine.sampling", "core.engine.lean_step"),
    "core.chat": (*BASE, "core.text", "core.engine.logprobs"),
    "core.config": (),
    "core.errors": (),
    "core.checks": ("core.errors",),
    "core.host": ("core",),  # it builds everything
}
NEVER = ("gradio", "demo", "app")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, absolute, with `from x import y` also counted as x.y (y may be a module)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def part_of(name: str) -> str:
    """The rule that governs module `name`: its package for subpackages, the module itself at core's top."""
    for part in sorted(ALLOWED, key=len, reverse=True):
        if name == part or name.startswith(part + "."):
            return part
    raise AssertionError(f"{name} is in no part of core the rules know: add it to ALLOWED")


CORE = sorted((ROOT / "core").rglob("*.py"))


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", CORE, ids=[module_name(p) for p in CORE])
def test_core_imports_only_what_its_part_may(path):
    name = module_name(path)
    if name == "core":
        return
    part = part_of(name)
    allowed = (part, *ALLOWED[part])
    wrong = sorted(i for i in imports(path) if within(i, NEVER) or (within(i, ("core",)) and i != "core"
                                                                  and not within(i, allowed)))
    # `from core.x import Name` also records core.x.Name; only modules matter, so keep the ones whose parent fails too
    wrong = [i for i in wrong if within(i, NEVER) or not within(i.rpartition(".")[0], allowed)]
    assert not wrong, f"{name} ({part}) imports {wrong}; it may import {', '.join(allowed)}"


def top_level_imports(path: Path) -> set[str]:
    """The modules `path` imports when it is imported (module-level statements, not functions or TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_loader_imports_every_core_module_that_imports_torch_transformers_or_faiss():
    """core/host.py's HEAVY_MODULES, imported by the loader thread before the UI is built, must reach (through their
    own imports) every core module that imports one of them when imported: the UI imports core modules, and
    transformers' lazy module is not safe to import from two threads at once."""
    from core.host import HEAVY_MODULES

    paths = {module_name(p): p for p in CORE}
    heavy = {name for name, path in paths.items()
             if any(within(i, ("torch", "transformers", "faiss")) for i in top_level_imports(path))}
    reached, todo = set(), list(HEAVY_MODULES)
    while todo:
        name = todo.pop()
        if name in reached or name not in paths:
            continue
        reached.add(name)
        todo += [i for i in top_level_imports(paths[name]) if i in paths]
        todo += [name.rpartition(".")[0]] if "." in name else []  # a package's __init__ runs first
    missing = sorted(heavy - reached)
    assert not missing, f"the loader does not import {missing}: add them (or a module importing them) to HEAVY_MODULES"


def test_demo_never_imports_the_entry_point():
    for path in sorted((ROOT / "demo").rglob("*.py")):
        assert not [i for i in imports(path) if within(i, ("app",))], f"{module_name(path)} imports app"


def test_a_module_that_imports_upward_is_caught(tmp_path):
    """The walk sees an import inside a function and under TYPE_CHECKING: the rule cannot be dodged by hiding it."""
    fake = ROOT / "core" / "model" / "_upward_probe.py"
    fake.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from core.engine.base import Engine\n"
                    "def f():\n    import gradio\n")
    try:
        found = imports(fake)
        assert "core.engine.base" in found and "gradio" in found
        with pytest.raises(AssertionError, match="imports"):
            test_core_imports_only_what_its_part_may(fake)
    finally:
        fake.unlink()
