"""The run config: one YAML file per run, validated before any work starts.

A config is plain data. :func:`load_config` reads the YAML, applies dotted
command-line overrides (``generator.name=dcgan``, ``regularizers.0.gamma=0.5``),
validates the core fields against the schema below, then validates each plugin's
options against that plugin's own ``Params``. Every problem becomes one line that
starts with the field path. The resolved config (plugin defaults filled in) is
what the run directory's ``config.yaml`` holds.

A minimal config::

    run_dir: runs/demo
    data: {format: embedded, resolution: 32, channels: 3}
    generator: {name: dcgan}
    budget: {kimg: 20}
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import Field, field_validator, model_validator

from .errors import ConfigError, PluginError, did_you_mean
from .files import write_text_atomic
from .registry import Registry


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class IntensityConfig(_Strict):
    """How raw pixel values become [-1, 1].

    ``auto``: 8-bit images use their dtype range, images with a window in their
    header (DICOM) use that window, everything else uses percentiles.
    """

    mode: Literal["auto", "dtype", "minmax", "percentile", "window"] = "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)  # for mode "percentile" (and "auto")
    window: tuple[float, float] | None = None  # (center, width) for mode "window"; None: the file's

    @field_validator("percentiles")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 <= low < high <= 100:
            raise ValueError(f"need 0 <= low < high <= 100 (got {list(value)})")
        return value

    @field_validator("window")
    @classmethod
    def _positive_width(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[1] <= 0:
            raise ValueError(f"window width must be positive (got {value[1]})")
        return value


class SplitConfig(_Strict):
    """The train / held-out split. Held-out images are never shown to a generator.

    ``group_by`` says which images belong together (one patient) and so stay on one
    side: a header attribute keyword of the format (DICOM ``PatientID``,
    ``StudyInstanceUID``, ...), ``column:NAME`` (a column of the labels CSV),
    ``regex:PATTERN`` (one capture group applied to each record id), or ``format``
    (the format's own group: DICOM series, NIfTI volume, the file). Unset: the
    format's default (``PatientID`` for DICOM, ``format`` for the others).
    """

    held_out_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    group_by: str | None = None

    @field_validator("group_by")
    @classmethod
    def _group_by_syntax(cls, value: str | None) -> str | None:
        if value is None:
            return value
        kind, _, argument = value.partition(":")
        if kind == "column" and _:
            if not argument.strip():
                raise ValueError("'column:' needs a column name of the labels CSV, e.g. column:patient")
        elif kind == "regex" and _:
            try:
                groups = re.compile(argument).groups
            except re.error as exc:
                raise ValueError(f"regex:{argument} is not a valid regular expression ({exc})") from None
            if groups != 1:
                raise ValueError(
                    f"regex:{argument} has {groups} capture groups; it needs exactly one, the part of each record id "
                    r"that names its group (e.g. regex:^(patient\d+)/ for ids like 'patient07/scan1.png')"
                )
        elif not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", value):
            raise ValueError(
                f"'{value}' is neither a header attribute keyword (e.g. PatientID), column:NAME, regex:PATTERN nor format"
            )
        return value


class DataConfig(_Strict):
    format: str = "auto"  # a registered data format, or "auto" to detect from the source
    source: str | None = None  # file or folder; relative paths are relative to the config file
    resolution: int = 32  # square output size, a power of two
    channels: Literal[1, 3] = 1
    labels: str = "auto"  # "auto" (what the format provides), "none", or a CSV file (relative: to the config file)
    labels_file_column: str = "file"  # CSV column with the record id (path relative to source)
    labels_column: str = "label"  # CSV column with the class name
    fit: Literal["crop", "pad"] = "crop"  # non-square images: center-crop or pad to square
    upscale: bool = False  # allow images smaller than the resolution (else an error)
    intensity: IntensityConfig = IntensityConfig()
    split: SplitConfig = SplitConfig()
    on_bad_file: Literal["error", "skip"] = "error"
    format_options: dict[str, Any] = Field(default_factory=dict)  # validated by the format's Params

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 4 or value > 4096 or value & (value - 1):
            raise ValueError(f"must be a power of two between 4 and 4096 (got {value})")
        return value


class PluginRef(pydantic.BaseModel):
    """``{name: ..., <plugin options>}``: a plugin's name and its options, inline."""

    model_config = pydantic.ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _inline_params(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, Mapping):
            value = dict(value)
            if "params" in value:
                raise ValueError("write plugin options inline next to 'name', not under 'params'")
            name = value.pop("name", None)
            if name is None:
                raise ValueError("missing 'name' (which plugin to use)")
            return {"name": name, "params": value}
        return value

    def plain(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


class BudgetConfig(_Strict):
    kimg: float = Field(gt=0)  # thousands of real images shown to the generator
    # Also stop after this many minutes of training (summed over resumed sessions), whichever comes
    # first: an equal wall-clock budget for backends of different speed. It depends on the machine:
    # the kimg reached is recorded, and a benchmark's report shows it.
    minutes: float | None = Field(None, gt=0)


class ScheduleConfig(_Strict):
    tick_kimg: float = Field(1.0, gt=0)  # log and report progress this often
    snapshot_kimg: float = Field(10.0, gt=0)  # write a checkpoint and a sample grid this often
    keep_checkpoints: int = Field(3, ge=1)  # how many recent checkpoints to keep
    grid_size: int = Field(16, ge=1, le=256)  # images in each sample grid
    metric_samples: int = Field(0, ge=0)  # synthetic images for end-of-run metrics; 0: as many as train


class EvaluationConfig(_Strict):
    """How metric values are qualified: reference rows and intervals (docs/metrics.md)."""

    references: bool = True  # measure the real (held-out), copies and noise reference rows (cached per dataset)
    resamples: int = Field(10, ge=0)  # half-samples of each synthetic set for the intervals; 0: none

    @field_validator("resamples")
    @classmethod
    def _not_one(cls, value: int) -> int:
        if value == 1:
            raise ValueError("one half-sample gives no spread: use 0 (no intervals) or at least 2")
        return value


class RunConfig(_Strict):
    run_dir: str = "runs/default"
    seed: int = 0
    data: DataConfig = DataConfig()
    generator: PluginRef
    regularizers: list[PluginRef] = Field(default_factory=list)
    metrics: list[PluginRef] = Field(default_factory=list)
    budget: BudgetConfig
    batch_size: int = Field(16, ge=1)  # global batch, over all processes
    precision: Literal["no", "fp16", "bf16"] = "no"  # Accelerate's mixed_precision
    schedule: ScheduleConfig = ScheduleConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @field_validator("precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        return "no" if value is False else value  # YAML 1.1 reads an unquoted `no` as false

    def plain(self) -> dict[str, Any]:
        """The config as plain data, plugin options inline (what ``config.yaml`` holds)."""
        data = self.model_dump(mode="json")
        data["generator"] = self.generator.plain()
        data["regularizers"] = [ref.plain() for ref in self.regularizers]
        data["metrics"] = [ref.plain() for ref in self.metrics]
        return data


# ---------------------------------------------------------------------------
# Loading, overrides, validation
# ---------------------------------------------------------------------------


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"key '{key}' is given twice (first on line {first_line}); keep one of them")
        self.line = line


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overriding a key is meant
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}); save the config as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: line {exc.line}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of fields, got a {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.path=value`` overrides; values are parsed as YAML (``1``, ``true``, ``[a, b]``)."""
    data = copy.deepcopy(data)
    for override in overrides:
        key, sep, raw_value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{override}': expected dotted.path=value, e.g. generator.name=dcgan")
        try:
            value = yaml.safe_load(raw_value) if raw_value != "" else ""
        except yaml.YAMLError:
            value = raw_value
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; a number is meant
            try:
                value = float(value)
            except ValueError:
                pass
        set_dotted(data, key, value, what=f"override '{override}'")
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any, what: str) -> None:
    """Set ``data[a][b][0]...`` for ``key`` ``a.b.0...`` in place, creating mappings on the way.

    ``what`` starts each error message (which override or sweep the key came from).
    """
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit():
                raise ConfigError(f"{what}: {where}: '{part}' must be a list index")
            index = int(part)
            if index >= len(node):
                raise ConfigError(f"{what}: {where}: the list has {len(node)} item(s)")
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"{what}: {where} is a value, not a mapping or list")
        else:
            raise ConfigError(f"{what}: {where} is a value, not a mapping or list")


def _field_names(model: type[pydantic.BaseModel]) -> list[str]:
    return list(model.model_fields)


def _model_at(loc: Sequence[Any], root: type[pydantic.BaseModel] | None = None) -> type[pydantic.BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for listing its known fields)."""
    model: Any = root or RunConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, pydantic.BaseModel) else None
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, pydantic.BaseModel)), None)
        if model is None:
            return None
    return model


def format_validation_error(exc: pydantic.ValidationError, prefix: str = "", model: type[pydantic.BaseModel] | None = None) -> list[str]:
    """One line per problem: ``field.path: what is wrong``."""
    lines = []
    for error in exc.errors():
        loc = [part for part in error["loc"] if part not in ("function-after", "function-before")]
        path = prefix + ".".join(str(part) for part in loc)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            owner = _model_at(loc, model)
            known = _field_names(owner) if owner is not None else []
            name = str(loc[-1]) if loc else ""
            message = "unknown field" + (f"; known fields: {', '.join(known)}." if known else ".") + did_you_mean(name, known)
        elif error["type"] == "missing":
            message = "required field is missing"
        elif error["type"] == "literal_error":
            message = f"{message} (got {error.get('input')!r})"
        lines.append(f"{path or '(top level)'}: {message}")
    return lines


def validate_params(model: type[pydantic.BaseModel], options: Mapping[str, Any], field: str) -> Any:
    """Validate ``options`` against a params ``model``; errors name ``field``."""
    try:
        return model.model_validate(dict(options))
    except pydantic.ValidationError as exc:
        raise ConfigError("\n".join(format_validation_error(exc, prefix=field + ".", model=model))) from None


def validate_plugin_params(cls: type, options: Mapping[str, Any], field: str) -> Any:
    """Validate ``options`` against the plugin class's ``Params``; errors name ``field``."""
    return validate_params(cls.Params, options, field)


def is_labels_file(labels: str) -> bool:
    """Whether ``data.labels`` names a CSV file (not ``auto`` or ``none``)."""
    return labels not in ("auto", "none")


def load_config(
    source: str | Path | Mapping[str, Any],
    overrides: Sequence[str] = (),
    registry: Registry | None = None,
) -> RunConfig:
    """Read, override and validate a run config; plugin options get their defaults.

    ``source`` is a YAML file or a mapping. With a file, a relative ``data.source`` (and a
    relative ``data.labels`` CSV) is resolved against the file's folder, so a config works
    from any working directory.
    """
    if isinstance(source, Mapping):
        data, origin, base = dict(source), "config", None
    else:
        data, origin, base = read_yaml(source), str(source), Path(source).resolve().parent
    data = apply_overrides(data, overrides)
    try:
        config = RunConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        lines = format_validation_error(exc) + (unknown_plugin_names(data, registry) if registry is not None else [])
        raise ConfigError("\n".join(f"{origin}: {line}" for line in sorted(lines))) from None
    if base is not None and config.data.source and not Path(config.data.source).expanduser().is_absolute():
        config.data.source = os.path.normpath(base / config.data.source)
    elif config.data.source and Path(config.data.source).is_absolute():
        config.data.source = os.path.normpath(config.data.source)  # the same folder, however it was spelt
    if base is not None and is_labels_file(config.data.labels) and not Path(config.data.labels).expanduser().is_absolute():
        config.data.labels = os.path.normpath(base / config.data.labels)  # like data.source: relative to the config file
    if registry is not None:
        try:
            config = resolve_plugins(config, registry)
        except (ConfigError, PluginError) as exc:
            raise type(exc)("\n".join(f"{origin}: {line}" for line in str(exc).splitlines())) from None
    return config


def unknown_plugin_names(data: Mapping[str, Any], registry: Registry) -> list[str]:
    """Plugin-name errors in raw config data, reported along with schema errors."""
    refs = [("generator", "generator", data.get("generator"))]
    for kind, key in (("regularizer", "regularizers"), ("metric", "metrics")):
        items = data.get(key)
        refs += [(kind, f"{key}.{i}", ref) for i, ref in enumerate(items)] if isinstance(items, list) else []
    errors = []
    for kind, field, ref in refs:
        name = ref.get("name") if isinstance(ref, Mapping) else ref
        if isinstance(name, str):
            try:
                registry.get(kind, name)
            except PluginError as exc:
                errors.append(f"{field}.name: {exc}")
    return errors


def resolve_plugins(config: RunConfig, registry: Registry) -> RunConfig:
    """Check every plugin name and validate its options; fill in their defaults."""
    config = config.model_copy(deep=True)
    refs: list[tuple[str, str, PluginRef]] = [("generator", "generator", config.generator)]
    refs += [("regularizer", f"regularizers.{i}", ref) for i, ref in enumerate(config.regularizers)]
    refs += [("metric", f"metrics.{i}", ref) for i, ref in enumerate(config.metrics)]
    errors: list[str] = []
    for kind, field, ref in refs:
        try:
            cls = registry.get(kind, ref.name).cls
            ref.params = validate_plugin_params(cls, ref.params, field).model_dump(mode="json")
        except PluginError as exc:
            errors.append(f"{field}.name: {exc}")
        except ConfigError as exc:
            errors.extend(str(exc).splitlines())
    if config.data.format != "auto":
        try:
            fmt = registry.data_format(config.data.format)
            config.data.format_options = validate_plugin_params(fmt, config.data.format_options, "data.format_options").model_dump(mode="json")
            if fmt.needs_source and not config.data.source:
                errors.append(f"data.source: format '{config.data.format}' reads files: set data.source to a file or folder")
        except PluginError as exc:
            errors.append(f"data.format: {exc}")
        except ConfigError as exc:
            errors.extend(str(exc).splitlines())
    elif not config.data.source:
        errors.append("data.source: required with format 'auto' (or set data.format, e.g. 'embedded')")
    if not errors and config.regularizers:
        generator_cls = registry.generator(config.generator.name)
        roles = generator_cls.regularizer_roles
        for i, ref in enumerate(config.regularizers):
            role = registry.regularizer(ref.name).role
            if role not in roles:
                offered = ", ".join(sorted(roles)) or "none"
                errors.append(
                    f"regularizers.{i}.name: regularizer '{ref.name}' applies to the {role}, which generator "
                    f"'{config.generator.name}' does not have (it takes regularizers for: {offered})"
                )
    if config.precision == "fp16" and not _cuda_available():
        errors.append("precision: fp16 needs a CUDA GPU; use 'bf16' or 'no' on this machine")
    if errors:
        raise ConfigError("\n".join(errors))
    return config


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def save_config(config: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML, atomically (a kill mid-write leaves the previous file)."""
    write_text_atomic(path, yaml.safe_dump(config.plain(), sort_keys=False))
