"""The layout's rules (docs/architecture.md), read from the source: every import, at the top of a
module or inside a function, counts."""

import ast
from pathlib import Path

import pytest

LUNA = Path(__file__).resolve().parents[1] / "luna"
CORE = ("io", "data", "models", "metrics", "evaluation", "segmentation", "training")
OUTSIDE_THE_CORE = ("luna16", "points", "cli", "experiments", "detection", "inference", "callbacks")


def imports_of(path: Path) -> set[str]:
    """Every ``luna.*`` module ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name == "luna" or name.startswith("luna.")}


def package_of(module: str) -> str:
    """``luna.data.cache.read`` -> ``data``; ``luna.fit`` (a command's runner) -> ``fit``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = {path: imports_of(path) for path in LUNA.rglob("*.py") if "__pycache__" not in path.parts}


def where(path: Path) -> str:
    return package_of(".".join(path.relative_to(LUNA.parent).with_suffix("").parts))


@pytest.mark.parametrize("package", CORE)
def test_the_core_knows_nothing_of_datasets_commands_or_what_is_built_on_it(package):
    wrong = {
        f"{path.relative_to(LUNA.parent)} imports {module}"
        for path, modules in MODULES.items()
        if where(path) == package
        for module in modules
        if package_of(module) in OUTSIDE_THE_CORE
    }
    assert not wrong, sorted(wrong)


def test_only_the_commands_import_luna_cli():
    wrong = {
        str(path.relative_to(LUNA.parent))
        for path, modules in MODULES.items()
        if where(path) != "cli" and path.parent != LUNA and any(package_of(m) == "cli" for m in modules)
    }
    assert not wrong, sorted(wrong)


def test_no_two_packages_import_each_other_even_through_others():
    graph: dict[str, set[str]] = {}
    for path, modules in MODULES.items():
        if path.parent == LUNA:
            continue  # luna/fit.py and the other runners: commands, not packages
        graph.setdefault(where(path), set()).update(
            package_of(module) for module in modules if package_of(module) not in ("", where(path))
        )

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(package for package in graph if package in reachable(package))
    assert not cycles, {package: sorted(graph[package]) for package in cycles}


def test_commands_are_thin():
    long = {
        str(path.relative_to(LUNA.parent)): len(path.read_text().splitlines())
        for path in (LUNA / "cli").glob("*.py")
        if len(path.read_text().splitlines()) > 200
    }
    assert not long, long
