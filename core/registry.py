"""Plugin loading: the whole set-up of raresynth's plugin system in one file.

Plugins are found through the ``raresynth`` entry-point group; the built-in ones
(``raresynth.plugins.*``) are registered there by raresynth's own ``pyproject.toml``
exactly as a third party registers theirs. Loading happens once, lazily, on the
first call to :func:`get_registry` (never as an import side effect).

* ``RARESYNTH_PLUGINS=a,b`` (or ``raresynth --plugins a,b``) loads only the
  entry points named ``a`` and ``b``; an empty value loads none.
* ``RARESYNTH_PLUGIN_MODULES=pkg.mod,other`` also loads these importable modules as
  plugins without installing them (a plugin under development, a test suite's fixture
  plugins); each is named by its module path. ``RARESYNTH_PLUGINS`` does not filter them.
* ``RARESYNTH_TRACE_HOOKS=1`` prints every hook call to stderr.

A plugin that fails to import, implements a misspelled hook, or raises while
registering is recorded as broken (with its distribution and the error) and left
out; the other plugins keep working. ``raresynth plugins`` lists broken plugins, and
every command warns about them on stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, did_you_mean
from .interfaces import DataFormat, Generator, Metric, PluginParams, Regularizer

ENTRY_POINT_GROUP = "raresynth"
PLUGINS_ENV = "RARESYNTH_PLUGINS"
MODULES_ENV = "RARESYNTH_PLUGIN_MODULES"
TRACE_ENV = "RARESYNTH_TRACE_HOOKS"

hookimpl = pluggy.HookimplMarker("raresynth")

# kind -> (registration hook, base class every registered class must subclass)
KINDS: dict[str, tuple[str, type]] = {
    "generator": ("raresynth_register_generators", Generator),
    "regularizer": ("raresynth_register_regularizers", Regularizer),
    "metric": ("raresynth_register_metrics", Metric),
    "data_format": ("raresynth_register_data_formats", DataFormat),
}


@dataclass(frozen=True)
class Registration:
    """One thing a plugin registered: a generator, regularizer, metric or data format."""

    kind: str
    name: str
    cls: type
    plugin: str  # the plugin (entry-point name) that registered it


@dataclass
class PluginInfo:
    """A plugin as ``raresynth plugins`` shows it."""

    name: str  # entry-point name, or the name given to ``load_plugins(extra=...)``
    module: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    registers: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None  # set when the plugin is broken and was left out

    @property
    def broken(self) -> bool:
        return self.error is not None


class Registry:
    """What the loaded plugins provide, with lookups that fail helpfully."""

    def __init__(self, manager: pluggy.PluginManager):
        self.manager = manager
        self.plugins: list[PluginInfo] = []
        self._items: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}

    # -- lookups ----------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(self._items[kind])

    def get(self, kind: str, name: str) -> Registration:
        """The registration of ``name``, or a :class:`PluginError` listing what is installed."""
        items = self._items[kind]
        if name in items:
            return items[name]
        label = kind.replace("_", " ")
        installed = ", ".join(sorted(items)) or "none"
        message = f"unknown {label} '{name}'; installed: {installed}.{did_you_mean(name, items)}"
        broken = [p for p in self.plugins if p.broken]
        if broken:
            message += " Broken plugins (see `raresynth plugins`): " + ", ".join(p.name for p in broken) + "."
        raise PluginError(message)

    def generator(self, name: str) -> type[Generator]:
        return self.get("generator", name).cls

    def regularizer(self, name: str) -> type[Regularizer]:
        return self.get("regularizer", name).cls

    def metric(self, name: str) -> type[Metric]:
        return self.get("metric", name).cls

    def data_format(self, name: str) -> type[DataFormat]:
        return self.get("data_format", name).cls

    def registration_of(self, cls: type) -> Registration | None:
        """The registration of the class ``cls`` (the first name it was registered under), or None."""
        for items in self._items.values():
            for registration in items.values():
                if registration.cls is cls:
                    return registration
        return None

    def describe(self, cls: type) -> str:
        """``generator 'name' of plugin 'p' (package dist)``: who registered ``cls``, for error messages."""
        registration = self.registration_of(cls)
        if registration is None:
            return f"{cls.__module__}.{cls.__qualname__} (not registered by any loaded plugin)"
        info = next((p for p in self.plugins if p.name == registration.plugin), None)
        package = (info.distribution or info.module) if info is not None else "?"
        return f"{registration.kind.replace('_', ' ')} '{registration.name}' of plugin '{registration.plugin}' (package {package})"

    @property
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.broken]

    @property
    def hook(self) -> Any:
        """The hook relay, for calling lifecycle hooks: ``registry.hook.raresynth_tick(...)``."""
        return self.manager.hook

    # -- loading ----------------------------------------------------------

    def add(self, plugin: object, name: str, module: str, distribution: str | None = None, version: str | None = None) -> PluginInfo:
        """Register one plugin object and collect what it registers.

        A plugin with an unknown hook name or a failing registration hook is
        unregistered again and recorded as broken.
        """
        info = PluginInfo(name=name, module=module, distribution=distribution, version=version)
        self.plugins.append(info)
        try:
            self.manager.register(plugin, name=name)
        except ValueError as exc:  # same name or object registered twice
            info.error = f"not loaded: {exc}"
            return info
        except pluggy.PluginValidationError as exc:
            info.error = str(exc)
            return info
        try:
            self._check_hook_names(plugin, name)
            info.hooks = sorted(impl_name for impl_name in _hook_names(self.manager, plugin))
            info.registers = self._collect(plugin, name)
        except Exception as exc:  # noqa: BLE001 - any failure isolates this plugin only
            self.manager.unregister(plugin)
            for kind_items in self._items.values():
                for key in [k for k, reg in kind_items.items() if reg.plugin == name]:
                    del kind_items[key]
            info.error = _one_line(exc)
        return info

    def _check_hook_names(self, plugin: object, name: str) -> None:
        known = [n for n in dir(hookspecs) if n.startswith("raresynth_")]
        for hook_name in _hook_names(self.manager, plugin):
            if hook_name not in known:
                raise PluginError(
                    f"plugin '{name}' implements unknown hook '{hook_name}'.{did_you_mean(hook_name, known)}"
                )
        # pluggy's own check: every implementation matches a spec (argument names included).
        self.manager.check_pending()

    def _collect(self, plugin: object, plugin_name: str) -> dict[str, list[str]]:
        """Call this plugin's registration hooks, each with a ``register`` bound to it."""
        others = [p for p in self.manager.get_plugins() if p is not plugin]
        registered: dict[str, list[str]] = {}
        for kind, (hook_name, base) in KINDS.items():
            caller = self.manager.subset_hook_caller(hook_name, remove_plugins=others)

            def register(name: str, cls: type, *, _kind: str = kind, _base: type = base) -> None:
                self._register(_kind, _base, name, cls, plugin_name)
                registered.setdefault(_kind, []).append(name)

            caller(register=register)
        return registered

    def _register(self, kind: str, base: type, name: str, cls: type, plugin_name: str) -> None:
        label = kind.replace("_", " ")
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(f"plugin '{plugin_name}' registers a {label} named {name!r}: use a Python identifier such as 'my_{kind}'")
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(
                f"plugin '{plugin_name}' registers {label} '{name}' as {cls!r}, which is not a subclass of raresynth.{base.__name__}"
            )
        params = getattr(cls, "Params", None)
        if not (isinstance(params, type) and issubclass(params, PluginParams)):
            raise PluginError(f"plugin '{plugin_name}': {label} '{name}' needs a Params class derived from raresynth.PluginParams")
        existing = self._items[kind].get(name)
        if existing is not None:
            raise PluginError(
                f"plugin '{plugin_name}' registers {label} '{name}', already registered by plugin '{existing.plugin}'; rename one of them"
            )
        self._items[kind][name] = Registration(kind=kind, name=name, cls=cls, plugin=plugin_name)


def _hook_names(manager: pluggy.PluginManager, plugin: object) -> list[str]:
    callers = manager.get_hookcallers(plugin) or []
    return [caller.name for caller in callers]


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PluginError) else str(exc)
    return " ".join(text.split())


def _import_error(module: str, exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({last.filename}:{last.lineno})" if last else ""
    return f"failed to import {module}: {_one_line(exc)}{where}"


def make_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("raresynth")
    manager.add_hookspecs(hookspecs)
    if os.environ.get(TRACE_ENV):
        manager.trace.root.setwriter(lambda message: sys.stderr.write(f"[raresynth hook] {message}"))
        manager.enable_tracing()
    return manager


def parse_plugin_list(value: str | None) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; ``None`` -> ``None`` (no restriction)."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def load_plugins(only: Sequence[str] | None = None, extra: Iterable[tuple[str, object]] = ()) -> Registry:
    """Load plugins from the ``raresynth`` entry-point group (and ``extra`` ones).

    :param only: entry-point names to load; ``None`` reads ``RARESYNTH_PLUGINS`` and,
        when that is unset, loads every installed plugin.
    :param extra: ``(name, plugin_object)`` pairs registered after the entry points,
        for plugins that are not installed (tests, notebooks).
    """
    if only is None:
        only = parse_plugin_list(os.environ.get(PLUGINS_ENV))
    registry = Registry(make_manager())
    entry_points = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    available = [ep.name for ep in entry_points]
    if only is not None:
        for wanted in only:
            if wanted not in available:
                raise PluginError(
                    f"{PLUGINS_ENV} / --plugins names '{wanted}', which is not an installed plugin; installed: "
                    f"{', '.join(available) or 'none'}.{did_you_mean(wanted, available)}"
                )
    for ep in entry_points:
        if only is not None and ep.name not in only:
            continue
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        version = dist.version if dist is not None else None
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the others
            registry.plugins.append(PluginInfo(name=ep.name, module=ep.value, distribution=dist_name, version=version,
                                               error=_import_error(ep.value, exc)))
            continue
        registry.add(plugin, name=ep.name, module=ep.value, distribution=dist_name, version=version)
    for module_name in parse_plugin_list(os.environ.get(MODULES_ENV)) or []:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - as for entry points
            registry.plugins.append(PluginInfo(name=module_name, module=module_name,
                                               error=f"{_import_error(module_name, exc)} (named in {MODULES_ENV})"))
            continue
        registry.add(module, name=module_name, module=module_name)
    for name, plugin in extra:
        registry.add(plugin, name=name, module=getattr(plugin, "__name__", type(plugin).__name__))
    return registry


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loading plugins on first use."""
    global _registry
    if _registry is None:
        _registry = load_plugins()
    return _registry


def set_registry(registry: Registry | None) -> None:
    """Replace the process-wide registry (``None`` reloads on next use)."""
    global _registry
    _registry = registry
