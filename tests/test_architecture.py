"""The package's shape: plugins use only the public API, no import circles, wings import downwards only.

Read from the source with ``ast`` (every import statement, also those inside functions
and ``if TYPE_CHECKING:`` blocks: a circle through a type annotation is still a circle
in the design).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import raresynth

ROOT = Path(__file__).resolve().parents[1]
CORE, PLUGINS = ROOT / "core", ROOT / "plugins"
EXAMPLE_PLUGIN = ROOT / "docs" / "examples" / "raresynth_example_plugin"

# Each wing's rank: a module may import modules of its own rank or lower, never higher.
# The host (the plugin contract) is at the bottom; the command line at the top.
HOST = {"errors", "files", "interfaces", "hookspecs", "registry", "config", "version"}
RANKS = {"data": 1, "evaluation": 2, "training": 3, "bench": 4, "review": 4, "cli": 5, "__main__": 5, "testing": 5}


def module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def core_modules() -> dict[str, Path]:
    return {module_name(p, CORE, "raresynth"): p for p in sorted(CORE.rglob("*.py"))}


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import in the file, relative ones resolved.

    ``from a import b`` counts as importing ``a.b`` when that is a module, else ``a``.
    """
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in modules else target, node.lineno))
    return found


def core_graph() -> dict[str, set[str]]:
    modules = core_modules()
    return {name: {target for target, _ in imports_of(path, name, modules) if target in modules and target != name}
            for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one module (import circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def rank(module: str) -> int | None:
    """The wing's rank of ``raresynth.<wing>...``; ``None`` for the public-API facade ``raresynth`` itself."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return 0 if parts[1] in HOST else RANKS[parts[1]]


# -- the checks ----------------------------------------------------------------


def test_the_tarjan_helper_finds_a_circle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_inside_the_package():
    graph = core_graph()
    assert len(graph) > 20  # the walk found the package
    assert strongly_connected(graph) == []


def test_every_module_belongs_to_a_wing_with_a_rank():
    unknown = [name for name in core_modules() if name != "raresynth" and rank(name) is None]
    assert unknown == []
    # the host knows no wing: every host module's imports stay in the host
    for name, targets in core_graph().items():
        if name != "raresynth" and rank(name) == 0:
            assert {t for t in targets if rank(t) != 0} == set(), name


def test_wings_import_only_downwards():
    upward = [f"{name} imports {target} ({rank(name)} -> {rank(target)})"
              for name, targets in core_graph().items() if rank(name) is not None
              for target in targets if rank(target) is None or rank(target) > rank(name)]
    assert upward == []


def test_the_downwards_rule_catches_an_upward_import(tmp_path):
    # The same walk on a planted file: a data module importing the training wing.
    fake = tmp_path / "planted.py"
    fake.write_text("from ..training.loop import train\n")
    modules = {**core_modules(), "raresynth.data.planted": fake}
    (target, _), = imports_of(fake, "raresynth.data.planted", modules)
    assert target == "raresynth.training.loop" and rank(target) > rank("raresynth.data.planted")


def plugin_files() -> list[tuple[Path, Path]]:
    """``(file, its plugin package's folder)`` for every built-in plugin and the documented example."""
    files = [(p, PLUGINS / p.relative_to(PLUGINS).parts[0]) for p in sorted(PLUGINS.rglob("*.py")) if p.parent != PLUGINS]
    files += [(p, EXAMPLE_PLUGIN) for p in sorted(EXAMPLE_PLUGIN.rglob("*.py"))]
    return files


def private_imports(path: Path, package_dir: Path) -> list[str]:
    """What a plugin file imports of raresynth beyond its public API (or of another plugin's insides)."""
    problems = []
    depth = len(path.relative_to(package_dir).parts) - 1  # how far up a relative import may go and stay inside
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            problems += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.startswith("raresynth.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > depth:
                    problems.append(f"line {node.lineno}: relative import leaves the plugin package")
            elif node.module == "raresynth":
                problems += [f"line {node.lineno}: raresynth.{a.name} is not in raresynth.__all__"
                             for a in node.names if a.name not in raresynth.__all__]
            elif node.module and node.module.startswith("raresynth."):
                problems.append(f"line {node.lineno}: from {node.module} import ...")
    return problems


def test_plugins_import_only_the_public_api():
    files = plugin_files()
    assert len(files) > 20
    problems = {str(path.relative_to(ROOT)): found for path, package in files if (found := private_imports(path, package))}
    assert problems == {}


@pytest.mark.parametrize("source, expected", [
    ("from raresynth.evaluation.features import features\n", "from raresynth.evaluation.features import ..."),
    ("import raresynth.training\n", "import raresynth.training"),
    ("from raresynth import Dataset\n", "raresynth.Dataset is not in raresynth.__all__"),
    ("def f():\n    from raresynth.data import load_dataset\n", "from raresynth.data import ..."),
    ("from ... import core\n", "relative import leaves the plugin package"),
])
def test_the_plugin_check_catches_private_imports(tmp_path, source, expected):
    package = tmp_path / "my_plugin"
    package.mkdir()
    (package / "bad.py").write_text(source)
    (problem,) = private_imports(package / "bad.py", package)
    assert problem.endswith(expected)


def test_the_public_api_is_importable_and_complete():
    for name in raresynth.__all__:
        assert hasattr(raresynth, name), name
    # what plugins use is a subset of the public API (checked above); the API names no private helper
    assert not [name for name in raresynth.__all__ if name.startswith("_") and name != "__version__"]
