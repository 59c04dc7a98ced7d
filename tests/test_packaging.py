"""Packaging: every package under core/ and plugins/ is listed, so a regular install ships it."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).parent.parent


def test_pyproject_lists_every_package_directory():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    on_disk = set()
    for top, prefix in (("core", "raresynth"), ("plugins", "raresynth.plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            relative = init.parent.relative_to(ROOT / top).parts
            on_disk.add(".".join((prefix, *relative)))
    assert on_disk == listed


def test_every_builtin_plugin_has_an_entry_point():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entry_points = pyproject["project"]["entry-points"]["raresynth"]
    plugin_dirs = {p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists()}
    assert {value.rsplit(".", 1)[1] for value in entry_points.values()} == plugin_dirs


def test_the_review_app_ships_its_templates_and_assets():
    from fnmatch import fnmatch

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["raresynth.review"]
    review = ROOT / "core" / "review"
    files = [p.relative_to(review).as_posix() for folder in ("templates", "static") for p in (review / folder).rglob("*") if p.is_file()]
    assert len(files) >= 6
    assert [f for f in files if not any(fnmatch(f, pattern) for pattern in patterns)] == []
