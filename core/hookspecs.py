"""The hooks a raresynth plugin can implement.

A plugin is a module (or object) with functions decorated by ``raresynth.hookimpl``
whose names match the specs below. Built-in plugins and third-party plugins are
found the same way: through the ``raresynth`` entry-point group. Hooks are always
called with keyword arguments, so an implementation may accept fewer arguments
than its spec lists (pluggy passes only the ones it names).

Registration hooks follow one shape: the host passes a ``register`` callback, and
the plugin calls it once per thing it provides::

    from raresynth import hookimpl

    @hookimpl
    def raresynth_register_generators(register):
        register("my_gan", MyGAN)

Lifecycle hooks let observers (loggers, notifiers, dashboards) follow a run. They
are called on the main process only and their return values are ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import pluggy

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    from pathlib import Path

    from .interfaces import DataFormat, Generator, Metric, Regularizer, RunInfo

hookspec = pluggy.HookspecMarker("raresynth")


# ---------------------------------------------------------------------------
# Registration: called once, when plugins are loaded
# ---------------------------------------------------------------------------


@hookspec
def raresynth_register_generators(register: Callable[[str, type[Generator]], None]) -> None:
    """Register generative backends.

    :param register: call ``register(name, cls)`` for each backend, where ``cls`` is
        a subclass of :class:`raresynth.Generator`. ``name`` is what a run config
        puts in ``generator.name``.

    Called once when plugins are loaded. A name registered by two plugins is an
    error that names both plugins.
    """


@hookspec
def raresynth_register_regularizers(register: Callable[[str, type[Regularizer]], None]) -> None:
    """Register regularizers (penalties added to a backend's losses).

    :param register: call ``register(name, cls)`` for each regularizer, where ``cls``
        is a subclass of :class:`raresynth.Regularizer`. ``name`` is what a run
        config puts in ``regularizers[i].name``.

    Called once when plugins are loaded.
    """


@hookspec
def raresynth_register_metrics(register: Callable[[str, type[Metric]], None]) -> None:
    """Register metrics that compare real and synthetic image sets.

    :param register: call ``register(name, cls)`` for each metric, where ``cls`` is
        a subclass of :class:`raresynth.Metric`. ``name`` is what a run config puts
        in ``metrics[i].name``.

    Called once when plugins are loaded.
    """


@hookspec
def raresynth_register_data_formats(register: Callable[[str, type[DataFormat]], None]) -> None:
    """Register dataset formats (readers).

    :param register: call ``register(name, cls)`` for each format, where ``cls`` is a
        subclass of :class:`raresynth.DataFormat`. ``name`` is what a run config puts
        in ``data.format``.

    Called once when plugins are loaded.
    """


# ---------------------------------------------------------------------------
# Run lifecycle: called by the training loop, on the main process only
# ---------------------------------------------------------------------------


@hookspec
def raresynth_run_start(run: RunInfo, config: Mapping[str, Any]) -> None:
    """A training run starts (fresh or resumed).

    :param run: the run's directory, resolved config, data spec and progress so far
        (``run.progress.kimg`` is above zero when resuming).
    :param config: the resolved run config as plain data (what ``config.yaml`` in
        the run directory holds).

    Called after the data is loaded and the backend is built, before the first step.
    """


@hookspec
def raresynth_tick(run: RunInfo, stats: Mapping[str, float]) -> None:
    """A tick ended: the loop logged statistics.

    :param run: the run (``run.progress`` says where training stands).
    :param stats: the values written to ``log.jsonl`` for this tick: ``kimg``,
        ``img_per_s``, ``sec_per_kimg``, the backend's losses averaged over the tick,
        and anything else the backend reported.

    Called every ``schedule.tick_kimg`` thousand images.
    """


@hookspec
def raresynth_checkpoint_written(run: RunInfo, path: Path) -> None:
    """A checkpoint file was written (atomically) and is complete on disk.

    :param run: the run.
    :param path: the ``.safetensors`` checkpoint just written.
    """


@hookspec
def raresynth_run_end(run: RunInfo, status: str, error: str | None) -> None:
    """A training run ended.

    :param run: the run.
    :param status: ``"completed"`` (budget reached), ``"failed"`` (an error stopped
        it, for example a non-finite loss) or ``"interrupted"`` (Ctrl-C).
    :param error: the one-line error message when ``status`` is ``"failed"``.

    Called once, also when the run fails; exceptions raised here are reported and
    do not hide the original error.
    """
