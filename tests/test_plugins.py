"""The plugin system: entry points, registration, broken-plugin isolation, restriction."""

from __future__ import annotations

import textwrap

import pytest

import raresynth
from raresynth import hookimpl
from raresynth.cli import main
from raresynth.errors import PluginError
from raresynth.registry import load_plugins

BUILTIN_FORMATS = {"image_folder", "dicom", "nifti", "npz", "embedded"}


def test_builtin_plugins_register_through_entry_points():
    registry = load_plugins()
    names = {p.name for p in registry.plugins}
    assert {"formats", "embedded", "stylegan2_ada", "diffusion", "r1"} <= names
    assert BUILTIN_FORMATS <= set(registry.names("data_format"))
    assert {"stylegan2_ada", "ddpm"} <= set(registry.names("generator"))
    assert registry.get("generator", "stylegan2_ada").plugin == "stylegan2_ada"
    assert registry.get("data_format", "dicom").plugin == "formats"
    builtin = {p.name: p for p in registry.plugins}["formats"]
    assert builtin.distribution == "raresynth" and builtin.version == raresynth.__version__
    assert not registry.broken


def test_unknown_name_lists_installed_and_suggests_closest():
    registry = load_plugins()
    with pytest.raises(PluginError, match="unknown generator 'stylegan2'") as excinfo:
        registry.generator("stylegan2")
    message = str(excinfo.value)
    assert "unknown generator 'stylegan2'" in message
    assert "installed: ddpm, stylegan2_ada" in message
    assert "Did you mean 'stylegan2_ada'?" in message


class Misspelled:
    @hookimpl
    def raresynth_register_generator(self, register):  # missing the final "s"
        pass


def test_misspelled_hook_is_reported_and_others_keep_working():
    registry = load_plugins(extra=[("typo", Misspelled())])
    broken = {p.name: p for p in registry.broken}
    assert "typo" in broken
    assert "unknown hook 'raresynth_register_generator'" in broken["typo"].error
    assert "Did you mean 'raresynth_register_generators'?" in broken["typo"].error
    assert "stylegan2_ada" in registry.names("generator")  # the others still work
    assert registry.manager.get_plugin("typo") is None  # and the broken one is out


class WrongArgument:
    @hookimpl
    def raresynth_register_generators(self, registr):  # argument not in the spec
        pass


def test_hook_with_unknown_argument_is_broken():
    registry = load_plugins(extra=[("wrongarg", WrongArgument())])
    (broken,) = registry.broken
    assert broken.name == "wrongarg" and "registr" in broken.error


class RegistersNonGenerator:
    @hookimpl
    def raresynth_register_generators(self, register):
        register("not_a_backend", dict)


class RegistersDuplicate:
    @hookimpl
    def raresynth_register_data_formats(self, register):
        from raresynth.plugins.formats import ImageFolder

        register("dicom", ImageFolder)


def test_invalid_registrations_break_only_their_plugin():
    registry = load_plugins(extra=[("bad_class", RegistersNonGenerator()), ("dup", RegistersDuplicate())])
    errors = {p.name: p.error for p in registry.broken}
    assert "not a subclass of raresynth.Generator" in errors["bad_class"]
    assert "already registered by plugin 'formats'" in errors["dup"]
    assert registry.get("data_format", "dicom").plugin == "formats"
    assert "not_a_backend" not in registry.names("generator")


@pytest.fixture
def installed_broken_plugin(tmp_path, monkeypatch):
    """A real (tiny) distribution on sys.path whose plugin module fails to import."""
    dist = tmp_path / "raresynth_broken-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: raresynth-broken\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[raresynth]\nbroken = raresynth_broken_plugin\n")
    (tmp_path / "raresynth_broken_plugin.py").write_text(textwrap.dedent("""
        import a_module_that_is_not_installed
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "broken"


def test_plugin_that_fails_to_import_is_isolated_and_named_with_its_distribution(installed_broken_plugin, capsys):
    registry = load_plugins()
    (broken,) = registry.broken
    assert broken.name == "broken"
    assert broken.distribution == "raresynth-broken" and broken.version == "0.3"
    assert "a_module_that_is_not_installed" in broken.error
    assert "stylegan2_ada" in registry.names("generator")
    # the CLI lists it and says so in its exit code
    from raresynth.registry import set_registry

    set_registry(None)
    assert main(["plugins"]) == 1
    out = capsys.readouterr().out
    assert "broken  (raresynth-broken 0.3)  BROKEN" in out
    assert "generators: ddpm" in out


def test_environment_variable_restricts_plugins(monkeypatch):
    monkeypatch.setenv("RARESYNTH_PLUGINS", "formats")
    registry = load_plugins()
    assert [p.name for p in registry.plugins] == ["formats"]
    assert registry.names("generator") == []
    with pytest.raises(PluginError, match="not an installed plugin.*Did you mean 'formats'"):
        load_plugins(only=["fromats"])


def test_cli_plugins_flag_restricts(capsys):
    from raresynth.registry import set_registry

    try:
        assert main(["--plugins", "r1", "plugins"]) == 0
    finally:
        set_registry(None)
    out = capsys.readouterr().out
    assert "r1  (raresynth" in out and "formats" not in out


class Observer:
    def __init__(self):
        self.calls = []

    @hookimpl
    def raresynth_tick(self, stats):  # fewer arguments than the spec: allowed
        self.calls.append(stats["kimg"])


def test_lifecycle_hook_may_take_fewer_arguments():
    observer = Observer()
    registry = load_plugins(extra=[("observer", observer)])
    assert not registry.broken
    registry.hook.raresynth_tick(run=None, stats={"kimg": 1.5})
    assert observer.calls == [1.5]
    info = {p.name: p for p in registry.plugins}["observer"]
    assert info.hooks == ["raresynth_tick"]
