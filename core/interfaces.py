"""The small interfaces every plugin implements.

Four kinds of things plug into raresynth, each an abstract base class here:

* :class:`Generator` - a generative backend (a GAN, a diffusion model, ...).
* :class:`Regularizer` - a penalty a backend adds to one of its losses.
* :class:`Metric` - a number computed from real and synthetic image sets.
* :class:`DataFormat` - a reader that turns files into raw pixel arrays.

Each class declares ``Params``, a pydantic model of its own options: the core
validates the options a run config gives a plugin against it before any work starts,
so a typo in a plugin option is an error that names the config field.

Images are exchanged as float tensors in ``[-1, 1]``, shaped ``(N, C, H, W)``.
Labels are ``int64`` tensors of class indices, or ``None`` for unlabelled data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np
import pydantic
import torch

if TYPE_CHECKING:  # pragma: no cover
    from accelerate import Accelerator


class PluginParams(pydantic.BaseModel):
    """Base of every plugin's ``Params``: unknown options are errors, not ignored."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------
# Plain data passed between the core and plugins
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """What a backend needs to know about the training data to build itself."""

    resolution: int  # images are resolution x resolution (a power of two)
    channels: int  # 1 (grayscale) or 3 (RGB)
    class_names: tuple[str, ...] = ()  # empty for unlabelled data
    num_train: int = 0  # images in the training split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Batch:
    """One batch of real training images, on the backend's device."""

    images: torch.Tensor  # (B, C, H, W), float32 in [-1, 1]
    labels: torch.Tensor | None  # (B,) int64, or None when unlabelled


@dataclass
class Progress:
    """Where training stands. ``nimg`` counts real images shown, over all processes."""

    nimg: int = 0
    step: int = 0  # optimizer steps taken (one per batch)
    total_kimg: float = 0.0
    train_seconds: float = 0.0  # wall-clock seconds of training so far, over resumed sessions

    @property
    def kimg(self) -> float:
        return self.nimg / 1000.0


@dataclass
class ImageSet:
    """A set of images held in memory, with optional class labels."""

    images: torch.Tensor  # (N, C, H, W), float32 in [-1, 1]
    labels: torch.Tensor | None = None  # (N,) int64
    name: str = ""

    def __len__(self) -> int:
        return int(self.images.shape[0])


#: What a metric value's ideal is: the extreme that means better, or the value that real
#: images of this dataset get (``"real"``: closest to the ``real (held-out)`` reference row
#: is best, e.g. MS-SSIM diversity, Meehan et al.'s Z, authenticity), or ``"none"``
#: (context such as a real-vs-real baseline or a spread: never ranked).
IDEALS = ("higher", "lower", "real", "none")
#: Which question a value answers; it decides which trivial reference a value must tell
#: apart from real images to be informative (see :attr:`MetricValue.must_beat`).
QUESTIONS = ("fidelity", "diversity", "privacy", "utility")


@dataclass(frozen=True)
class MetricValue:
    """One number a metric reports, and what "better" means for it.

    ``ideal`` is ``"higher"``, ``"lower"``, ``"real"`` (closest to the value the real
    held-out images get) or ``"none"``; left empty it follows ``higher_is_better``
    (``True`` -> higher, ``False`` -> lower, ``None`` -> none), and ``higher_is_better``
    follows ``ideal`` when only that is given. ``question`` says what the value measures
    (fidelity, diversity, privacy, utility).
    """

    name: str
    value: float
    higher_is_better: bool | None = None
    ideal: str = ""
    question: str = "fidelity"

    def __post_init__(self) -> None:
        ideal = self.ideal or {True: "higher", False: "lower", None: "none"}[self.higher_is_better]
        if ideal not in IDEALS:
            raise ValueError(f"MetricValue {self.name!r}: ideal must be one of {', '.join(IDEALS)}, not {self.ideal!r}")
        if self.question not in QUESTIONS:
            raise ValueError(f"MetricValue {self.name!r}: question must be one of {', '.join(QUESTIONS)}, not {self.question!r}")
        if self.ideal and self.higher_is_better is not None and {"higher": True, "lower": False}.get(ideal) != self.higher_is_better:
            raise ValueError(f"MetricValue {self.name!r}: ideal {ideal!r} contradicts higher_is_better={self.higher_is_better}")
        object.__setattr__(self, "ideal", ideal)
        object.__setattr__(self, "higher_is_better", {"higher": True, "lower": False}.get(ideal))

    @property
    def must_beat(self) -> tuple[str, ...]:
        """The trivial references (``noise``, ``copies``) this value must rank behind real images.

        Fidelity, diversity and utility values must tell noise from real images; copies
        of training images look real, so they are no test for those. Privacy values must
        catch copies; that noise is private is no merit.
        """
        return ("copies",) if self.question == "privacy" else ("noise",)


@dataclass
class PenaltyInputs:
    """What a backend hands a regularizer when it asks for a penalty.

    A backend fills what it has; a regularizer uses what it needs. ``model`` is the
    network the regularizer's role names (for ``"discriminator"``: a callable
    ``model(images, labels) -> logits``).
    """

    step: int  # optimizer steps of this role taken so far (for lazy regularization)
    model: Callable[..., torch.Tensor] | None = None
    real: torch.Tensor | None = None
    fake: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    real_logits: torch.Tensor | None = None
    fake_logits: torch.Tensor | None = None


@dataclass
class Record:
    """One 2D image a data format can read: a file, a frame, a slice or an array row.

    Records never carry patient metadata: ``meta`` holds technical facts only
    (slice axis, frame number, ...).
    """

    id: str  # stable and unique within the dataset, e.g. "sub/a.png" or "vol.nii.gz#z=12"
    source: Path  # the file it is read from (for error messages)
    index: int | None = None  # frame / slice / row within ``source``
    label: str | None = None  # class name, when the format provides one
    group: str = ""  # records of one group (patient, volume) stay on one side of the split
    split: str | None = None  # "train" or "held_out" when the source fixes it
    meta: dict[str, Any] = field(default_factory=dict)
    # Set when the format lists an entry no image can come from (a dangling link, a FIFO, a
    # second path to a file already listed): the core never reads it and reports it as skipped.
    skipped: str | None = None


@dataclass
class RawImage:
    """Pixels as read from a file, before any preprocessing."""

    pixels: np.ndarray  # (H, W) or (H, W, C) in the file's own dtype and units
    window: tuple[float, float] | None = None  # (center, width) from the file, e.g. DICOM


# ---------------------------------------------------------------------------
# Plugin interfaces
# ---------------------------------------------------------------------------


class Generator(ABC):
    """A generative backend that the core's training loop drives.

    Life cycle: the core builds it with validated ``params`` and the data ``spec``,
    calls :meth:`setup` once with the run's ``Accelerator``, then calls
    :meth:`train_step` once per batch until the kimg budget is spent. It calls
    :meth:`state_dict` to checkpoint and :meth:`load_state_dict` to resume or to
    sample from a finished run.

    Randomness: before every step the core seeds torch's global RNG from
    (run seed, process rank, step), so a backend that draws its noise from the global
    RNG resumes exactly, with nothing to save.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    #: Options accepted at sampling time (``raresynth sample RUN key=value``).
    SampleParams: ClassVar[type[PluginParams]] = PluginParams
    #: Roles a regularizer may apply to in this backend, e.g. {"discriminator"}.
    regularizer_roles: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: PluginParams, spec: DataSpec, regularizers: Sequence[Regularizer] = ()):
        self.params = params
        self.spec = spec
        self.regularizers = list(regularizers)

    @abstractmethod
    def setup(self, accelerator: Accelerator) -> None:
        """Build networks and optimizers on ``accelerator.device`` and ``prepare`` them.

        torch's RNG is seeded with the run seed (the same on every process) just
        before, so initial weights are reproducible and identical across processes.
        """

    @abstractmethod
    def train_step(self, batch: Batch, progress: Progress) -> Mapping[str, torch.Tensor | float]:
        """Take one optimization step on ``batch``; return losses and other statistics.

        Return scalars as detached tensors where possible: the core averages them
        over a tick and only then moves them to the CPU, so no step waits on the GPU.
        """

    @abstractmethod
    def sample(self, seeds: Sequence[int], labels: torch.Tensor | None = None, options: PluginParams | None = None) -> torch.Tensor:
        """Generate one image per seed: ``(len(seeds), C, H, W)`` float in ``[-1, 1]``.

        The same seed (and label and options) always gives the same image, whatever
        else is in the batch. ``labels`` are class indices for conditional backends, on
        any device (move them to yours); ``options`` is a validated ``SampleParams``
        (``None`` means the defaults). Called on the main process only: use the
        unwrapped (or EMA) network, never a collective operation.
        """

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimizer, EMA, augmentation state.

        A nested structure of dicts, lists, tensors, numbers, strings, booleans and
        ``None`` (as ``torch.optim.Optimizer.state_dict()`` returns). The core stores
        it as safetensors plus JSON; nothing is pickled.
        """

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def modules(self) -> Mapping[str, torch.nn.Module]:
        """The networks, by role name; the core checks their weights stay finite."""
        return {}


class Regularizer(ABC):
    """A penalty a backend adds to the loss of the model that ``role`` names.

    Lazy regularization (Karras et al. 2020, "Analyzing and Improving the Image
    Quality of StyleGAN", sec. 3.1): a regularizer with ``interval = k`` is applied
    every k-th step of its role, and its penalty is already multiplied by k so that
    its average strength does not change.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    role: ClassVar[str] = "discriminator"

    def __init__(self, params: PluginParams, spec: DataSpec, name: str = ""):
        self.params = params
        self.spec = spec
        #: The name it was registered (and configured) under; backends log ``penalty_<name>``.
        self.name = name or type(self).__name__

    @property
    def interval(self) -> int:
        """Apply every ``interval`` steps of the role (1 = every step)."""
        return 1

    def due(self, step: int) -> bool:
        """True when the penalty should be applied at this step of its role."""
        return step % self.interval == 0

    @abstractmethod
    def penalty(self, inputs: PenaltyInputs) -> torch.Tensor:
        """The scalar penalty to add to the role's loss (already weighted)."""

    def state_dict(self) -> dict[str, Any]:
        """Own state to checkpoint (for example running averages)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class Augmentation(Regularizer):
    """A differentiable transformation of every image a discriminator sees (``role = "augment"``).

    Augmentation is a regularizer role, not a plugin kind of its own: it is registered
    with ``raresynth_register_regularizers``, configured in the run config's
    ``regularizers:`` list, and offered by a backend that lists ``"augment"`` in its
    ``regularizer_roles``. Such a backend passes the real and the generated images
    through :meth:`augment` of every augmentation, in config order, before each
    discriminator call (its main passes and the ``model`` it hands other
    regularizers), so that both distributions are augmented alike (Zhao et al. 2020,
    "Differentiable Augmentation for Data-Efficient GAN Training", sec. 3).

    :meth:`augment` must be differentiable w.r.t. the images (the generator is
    trained through it, R1 differentiates through it) and draw its randomness from
    torch's global RNG, which the loop reseeds every step (exact resume for free).
    An augmentation adds no penalty: :meth:`penalty` is zero.
    """

    role: ClassVar[str] = "augment"

    @abstractmethod
    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` ``(N, C, H, W)`` transformed, same shape and dtype."""

    def penalty(self, inputs: PenaltyInputs) -> torch.Tensor:
        return torch.zeros(())


class Metric(ABC):
    """A measurement computed from the real and synthetic image sets.

    ``train`` is the real training split, ``held_out`` the real held-out split (never
    shown to a generator), ``synthetic`` the generated images.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    #: What the metric needs beyond images, e.g. {"labels"}; checked before training starts.
    requires: ClassVar[frozenset[str]] = frozenset()
    #: True when :meth:`compute` looks at ``held_out`` itself (to calibrate, or to test a
    #: classifier on it). The ``real (held-out)`` reference row then gives it one half of
    #: the held-out images as the synthetic set and the other half as ``held_out`` (and
    #: the other way round, averaged), so that no image is compared with itself.
    uses_held_out: ClassVar[bool] = False
    #: False when a call of :meth:`compute` is too expensive to repeat on bootstrap
    #: resamples of the synthetic set (it trains a model, or extracts costly features);
    #: such values get confidence intervals from several seeds only.
    bootstrap: ClassVar[bool] = True

    def __init__(self, params: PluginParams, spec: DataSpec):
        self.params = params
        self.spec = spec
        #: A folder for the metric's artifacts (PNG grids, lists). The training loop sets
        #: it to ``<run_dir>/metrics`` before :meth:`compute`; ``None`` means write nothing.
        self.output_dir: Path | None = None

    @abstractmethod
    def compute(self, train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> list[MetricValue]:
        """Return the metric's values. Deterministic for the same inputs and params."""


class DataFormat(ABC):
    """A reader for one kind of source (a folder of images, DICOM, NIfTI, ...).

    :meth:`scan` lists the 2D images a source holds without decoding pixels;
    :meth:`read` decodes one. The core does all preprocessing (intensity
    normalization, crop or pad, resize, channels) the same way for every format.
    Readers raise :class:`raresynth.DataError` naming the file and the reason.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    #: One line for ``raresynth plugins`` and ``raresynth data inspect``.
    description: ClassVar[str] = ""
    #: True when the format needs no ``data.source`` (it makes or ships its data).
    needs_source: ClassVar[bool] = True
    #: ``data.split.group_by`` when the config leaves it unset, e.g. "PatientID"; None:
    #: the format's own ``Record.group``.
    default_group_by: ClassVar[str | None] = None

    def __init__(self, params: PluginParams):
        self.params = params

    @classmethod
    def can_read(cls, source: Path) -> bool:
        """Whether this format recognizes ``source`` (used by ``format: auto``)."""
        return False

    @abstractmethod
    def scan(self, source: Path | None) -> list[Record]:
        """List the records in ``source``; labels filled where the format has them."""

    @abstractmethod
    def read(self, record: Record) -> RawImage:
        """Decode one record's pixels."""

    def attribute_value(self, record: Record, attribute: str) -> str | None:
        """The value of a header attribute (``data.split.group_by: PatientID``), or None when absent.

        Override in formats whose files carry headers. The core hashes the value at
        once and keeps only the hash, so a patient identifier never reaches a record,
        a log or a file; implementations must not store or log it either. Raise a
        DataError naming ``data.split.group_by`` for an attribute the format does not
        know. Formats that do not override it have no attributes to group by.
        """
        raise NotImplementedError


@dataclass
class RunInfo:
    """What lifecycle hooks see of a run."""

    run_dir: Path
    config: pydantic.BaseModel  # the run's RunConfig
    spec: DataSpec
    progress: Progress
    num_processes: int = 1
    checkpoints: list[Path] = field(default_factory=list)
    generator: Generator | None = None  # the trained backend (for sampling right after training)

