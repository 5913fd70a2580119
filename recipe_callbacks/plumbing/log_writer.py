"""The one place that finds the Trainer's loggers and writes scalars, pictures, text, histograms and files.

Scalars go to every logger (``logger.log_metrics``). Pictures, text, histograms and the report's
files go to every logger through its own API:

- ``TensorBoardLogger``: ``add_image`` / ``add_text`` / ``add_histogram``; files in its ``log_dir``.
- ``WandbLogger``: ``wandb.Image`` / ``wandb.Html`` / ``wandb.Histogram`` on the run; files in the
  run's own files directory (``run.dir``), which W&B uploads with the run.
- ``MLFlowLogger``: images, text and files as artifacts of the run itself (``MlflowClient``).
- ``CSVLogger``, any other logger, or no logger: PNG and Markdown files under ``<log_dir>/recipe/``
  (``default_root_dir`` without a logger), and a message says so once.

Loggers of both namespaces (``lightning.pytorch.loggers`` and ``pytorch_lightning.loggers``) are
recognised. Only global rank 0 writes. Rank 0 also keeps the latest picture and text of every tag
in memory (capped), so that the HTML report can show each check's pictures whatever the loggers.
"""

from __future__ import annotations

import html
import os
import sys
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from matplotlib.figure import Figure

from recipe_callbacks.core.drawing import FINISHED, Build, Drawer, Drawing, Picture, png_bytes
from recipe_callbacks.core.pictures import bar_chart, figure_to_image
from recipe_callbacks.plumbing.finding import RecipeWarning

if TYPE_CHECKING:
    import lightning.pytorch as pl

_ANNOUNCED_DIRS: set[str] = set()
_FAILED_WRITES: set[str] = set()
_DRAWER: Drawer | None = None
# the pictures on their way: (drawing, trainer, tag, step), in the order they were asked for
_PENDING: list[tuple[Drawing, Any, str, int, frozenset[str] | None]] = []
#: Set when a picture on its way is drawn: the hook wrapper (``callback_base``) settles then
PICTURES_READY = FINISHED
_LOGGER_MODULES = ("lightning.pytorch.loggers", "pytorch_lightning.loggers", "lightning.fabric.loggers",
                   "lightning_fabric.loggers")
# the scalar tags written through each Trainer, for RecipeReport's Custom Scalars layout
_SCALAR_TAGS: WeakKeyDictionary[Any, set[str]] = WeakKeyDictionary()


# ----------------------------------------------------------------------------- the loggers
def logger_kind(logger: Any) -> str:
    """``"tensorboard"``, ``"csv"``, ``"wandb"``, ``"mlflow"`` or ``"other"``, for loggers of
    either Lightning namespace (and their subclasses).

    Example:
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> logger_kind(CSVLogger("."))
        'csv'
    """
    logger_type = type(logger)
    kind = _KINDS.get(logger_type)
    if kind is None:  # looked up once per logger class: every scalar asks
        names = {"TensorBoardLogger": "tensorboard", "CSVLogger": "csv", "WandbLogger": "wandb",
                 "MLFlowLogger": "mlflow"}
        kind = next((names[cls.__name__] for cls in logger_type.__mro__
                     if cls.__name__ in names and cls.__module__.startswith(_LOGGER_MODULES)), "other")
        _KINDS[logger_type] = kind
    return kind


_KINDS: dict[type, str] = {}


def _local_dir(logger: Any, trainer: pl.Trainer) -> Path | None:
    """The run's own local directory of one logger, or ``None`` when it keeps no local files."""
    kind = logger_kind(logger)
    if kind in ("tensorboard", "csv"):
        return Path(logger.log_dir)
    if kind == "wandb":
        return Path(logger.experiment.dir)  # <save_dir>/wandb/<run>/files: uploaded with the run
    if kind == "mlflow":
        return None
    for attribute in ("log_dir", "save_dir"):
        path = getattr(logger, attribute, None)
        if isinstance(path, (str, os.PathLike)):
            return Path(path)
    return Path(trainer.default_root_dir)


def run_log_dir(trainer: pl.Trainer) -> Path:
    """The run's local log dir: the first logger's own directory (``trainer.log_dir`` for
    TensorBoard and CSV, the run's files directory for W&B, the run's artifact directory for a local
    MLflow store), else ``default_root_dir``; without ``trainer.log_dir``'s collective broadcast
    (the writers here run on rank 0 only)."""
    if trainer.loggers:
        first = _loggers(trainer)[0]
        path = _mlflow_local_artifacts(first) if logger_kind(first) == "mlflow" else _local_dir(first, trainer)
        if path is not None:
            return path
    return Path(trainer.default_root_dir)


def recipe_file_dir(trainer: pl.Trainer) -> Path:
    """``<log_dir>/recipe``: where pictures and text land as files for a logger that cannot hold them."""
    return run_log_dir(trainer) / "recipe"


def tensorboard_writers(trainer: pl.Trainer) -> list[Any]:
    """The ``SummaryWriter`` of every ``TensorBoardLogger`` on the Trainer."""
    return [lg.experiment for lg in _loggers(trainer) if logger_kind(lg) == "tensorboard"]


def _file_dirs(trainer: pl.Trainer) -> list[Path]:
    """The directories that get pictures and text as files: one per CSV (or unknown) logger, or
    ``default_root_dir`` when the Trainer has no logger at all."""
    if not trainer.loggers:
        return [Path(trainer.default_root_dir)]
    dirs: list[Path] = []
    for lg in _loggers(trainer):
        if logger_kind(lg) in ("csv", "other"):
            path = _local_dir(lg, trainer)
            if path is not None and path not in dirs:
                dirs.append(path)
    return dirs


def _loggers(trainer: pl.Trainer) -> list[Any]:
    """The Trainer's loggers, typed loosely: each kind is used through its own API."""
    return list(trainer.loggers)


@contextmanager
def _guarded(logger: Any, what: str) -> Iterator[None]:
    """A logger service that fails (a W&B or MLflow server out of reach, a full disk) costs the
    user a warning, once per logger and kind of write, never the training run."""
    try:
        yield
    except Exception as err:
        key = f"{type(logger).__name__}:{what}"
        if key not in _FAILED_WRITES:
            _FAILED_WRITES.add(key)
            rank_zero_warn(f"recipe_callbacks: {type(logger).__name__} could not take the {what} "
                           f"({type(err).__name__}: {err}); training goes on without it", category=RecipeWarning)


def _step(trainer: pl.Trainer, step: int | None) -> int:
    return int(trainer.global_step if step is None else step)


def _relative(tag: str) -> str:
    return tag.removeprefix("recipe.").removeprefix("recipe/")


# ----------------------------------------------------------------------------- what rank 0 logged
@dataclass
class LoggedRecord:
    """The latest picture and text of every tag one Trainer logged, capped (rank 0 only)."""

    images: OrderedDict[str, tuple[int, np.ndarray]] = field(default_factory=OrderedDict)
    texts: OrderedDict[str, tuple[int, str]] = field(default_factory=OrderedDict)
    pngs: dict[str, bytes] = field(default_factory=dict)
    max_tags: int = 256
    max_image_bytes: int = 64 * 2**20
    max_text_chars: int = 20_000

    def add_image(self, tag: str, step: int, image: np.ndarray, png: bytes | None = None) -> None:
        self.images.pop(tag, None)
        self.images[tag] = (step, np.array(image, dtype=np.uint8, copy=True))
        if png:  # the picture already encoded (the report reuses it)
            self.pngs[tag] = png
        else:
            self.pngs.pop(tag, None)
        while len(self.images) > self.max_tags or (
            len(self.images) > 1 and sum(a.nbytes for _, a in self.images.values()) > self.max_image_bytes
        ):
            oldest, _ = self.images.popitem(last=False)  # the oldest tag goes first
            self.pngs.pop(oldest, None)

    def png(self, tag: str) -> bytes:
        """The latest picture of ``tag`` as PNG."""
        return self.pngs.get(tag) or png_bytes(self.images[tag][1])

    def add_text(self, tag: str, step: int, text: str) -> None:
        self.texts.pop(tag, None)
        self.texts[tag] = (step, text[: self.max_text_chars])
        while len(self.texts) > self.max_tags:
            self.texts.popitem(last=False)


_RECORDS: weakref.WeakKeyDictionary[Any, LoggedRecord] = weakref.WeakKeyDictionary()


def logged(trainer: pl.Trainer) -> LoggedRecord:
    """What rank 0 of this Trainer has logged so far: the latest picture and text of each tag."""
    record = _RECORDS.get(trainer)
    if record is None:
        record = _RECORDS[trainer] = LoggedRecord()
    return record


# ----------------------------------------------------------------------------- scalars
def log_scalars(trainer: pl.Trainer, values: Mapping[str, float], step: int | None = None) -> None:
    """Write ``{tag: value}`` to every logger at ``step`` (default: the global step)."""
    if not trainer.is_global_zero or not values:
        return
    metrics = {tag: float(v) for tag, v in values.items()}
    _SCALAR_TAGS.setdefault(trainer, set()).update(metrics)
    s = _step(trainer, step)
    for lg in _loggers(trainer):
        if logger_kind(lg) == "tensorboard":
            _tensorboard_scalars(lg, metrics, s)
        else:
            lg.log_metrics(metrics, step=s)


def _tensorboard_scalars(logger: Any, metrics: dict[str, float], step: int) -> None:
    """The values of one call as one TensorBoard event (one ``Summary``), with the tags
    ``logger.log_metrics`` gives them, where each of its ``add_scalar`` calls is an event of its own
    (about 40 us of the training process each, and again in the writer thread).

    The first call through a logger runs ``log_metrics`` with its ``add_scalar`` calls gathered (its
    prefix, a subclass's own way; a call with other arguments is passed on unchanged); when the
    logger's ``log_metrics`` is Lightning's own, the prefix it put before the tags is kept, and later
    calls make the event directly, held to be written with others (:func:`write_held_scalars`)."""
    experiment = logger.experiment
    writer = getattr(experiment, "file_writer", None)
    if writer is None or not type(experiment).__module__.startswith("torch.utils.tensorboard"):
        logger.log_metrics(metrics, step=step)
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    prefix = _TB_PREFIX.get(logger)
    if prefix is not None:
        _hold_scalars(writer, prefix, metrics, step)
        return
    gathered: list[Any] = []
    original = experiment.add_scalar

    def gather(tag: str, value: Any, global_step: Any = None, *args: Any, **kwargs: Any) -> None:
        if global_step == step and not args and not kwargs and isinstance(value, (int, float)):
            gathered.append(Summary.Value(tag=tag, simple_value=float(value)))
        else:
            original(tag, value, global_step, *args, **kwargs)

    previous = experiment.__dict__.get("add_scalar")
    experiment.add_scalar = gather
    try:
        logger.log_metrics(metrics, step=step)
    finally:
        if previous is None:
            experiment.__dict__.pop("add_scalar", None)
        else:
            experiment.add_scalar = previous
        if gathered:
            writer.add_summary(Summary(value=gathered), step)
    _learn_prefix(logger, list(metrics), [v.tag for v in gathered])


# Events written one by one, between training steps, cost about 150 us each (the code is cold after
# every step); written in a run, about 30 us. So the events of the learned-prefix path are held and
# written together: at HELD_EVENTS of them, when the first is HELD_SECONDS old (checked at every
# write and between the recipe callbacks' hooks), and at the end of every fit. TensorBoard's writer
# puts them on disk every 120 s anyway, with the step each carries.
HELD_EVENTS = 16
HELD_SECONDS = 2.0
_HELD: list[tuple[Any, str, dict[str, float], int]] = []  # (file writer, prefix, values, step)
#: When the oldest held event is due, on ``time.monotonic()`` (0.0: none held); a list, so that the
#: hook wrapper (``callback_base``) reads it without a call
HELD_DUE = [0.0]


def _held_due() -> bool:
    """Whether the oldest held event is due (the hook wrapper reads ``HELD_DUE`` the same way, inline)."""
    return bool(HELD_DUE[0]) and time.monotonic() >= HELD_DUE[0]


def _hold_scalars(writer: Any, prefix: str, metrics: dict[str, float], step: int) -> None:
    now = time.monotonic()
    if not _HELD:
        HELD_DUE[0] = now + HELD_SECONDS
    _HELD.append((writer, prefix, metrics, step))
    if len(_HELD) >= HELD_EVENTS or now >= HELD_DUE[0]:
        write_held_scalars()


def write_held_scalars() -> None:
    """Write the held scalar events (see ``HELD_EVENTS``), in the order they were logged."""
    if not _HELD:
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    held = list(_HELD)
    _HELD.clear()
    HELD_DUE[0] = 0.0
    for writer, prefix, metrics, step in held:
        try:
            writer.add_summary(Summary(value=[Summary.Value(tag=prefix + t, simple_value=v)
                                              for t, v in metrics.items()]), step)
        except Exception as err:  # a writer closed meanwhile: the fit goes on without these values
            key = f"held:{type(err).__name__}"
            if key not in _FAILED_WRITES:
                _FAILED_WRITES.add(key)
                rank_zero_warn(f"recipe_callbacks: TensorBoard could not take scalars ({type(err).__name__}: "
                               f"{err}); training goes on without them", category=RecipeWarning)


def _learn_prefix(logger: Any, tags: list[str], written: list[str]) -> None:
    """Keep the prefix Lightning's own ``log_metrics`` put before every tag (the same for all)."""
    stock = type(logger).log_metrics in _stock_log_metrics() and "log_metrics" not in vars(logger)
    if not stock or "add_scalar" in vars(logger.experiment) or len(written) != len(tags) or not tags:
        return
    prefix = written[0][: len(written[0]) - len(tags[0])]
    if all(w == prefix + t for t, w in zip(tags, written, strict=True)):
        _TB_PREFIX[logger] = prefix


def _stock_log_metrics() -> set[Any]:
    """``TensorBoardLogger.log_metrics`` of the Lightning packages imported (a logger's class comes from one)."""
    modules = ("lightning.fabric.loggers", "lightning.pytorch.loggers", "lightning_fabric.loggers",
               "pytorch_lightning.loggers")
    return {getattr(sys.modules[m].TensorBoardLogger, "log_metrics", None) for m in modules
            if hasattr(sys.modules.get(m), "TensorBoardLogger")}


#: The tag prefix of each TensorBoardLogger whose log_metrics is Lightning's own (learned at its first scalars).
_TB_PREFIX: WeakKeyDictionary[Any, str] = WeakKeyDictionary()


def scalar_tags(trainer: pl.Trainer) -> set[str]:
    """Every scalar tag written through :func:`log_scalars` for this Trainer so far."""
    return set(_SCALAR_TAGS.get(trainer, ()))


# ----------------------------------------------------------------------------- pictures, text, histograms
def markdown_to_html(text: str) -> str:
    """Markdown (tables included) as HTML, with the ``markdown`` package TensorBoard brings along."""
    try:
        import markdown

        return str(markdown.markdown(text, extensions=["tables", "fenced_code"]))
    except Exception:  # markdown missing or failing: the text, escaped, is still readable
        return f"<pre>{html.escape(text)}</pre>"


def _file_path(directory: Path, tag: str, step: int, suffix: str) -> Path:
    root = directory / "recipe"
    path = root / _relative(tag).replace("/", os.sep) / f"step_{step:07d}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if str(root) not in _ANNOUNCED_DIRS:
        _ANNOUNCED_DIRS.add(str(root))
        rank_zero_info(f"recipe_callbacks: pictures and text that this run's loggers cannot hold go to {root}")
    return path


def _artifact_file(tag: str, step: int, suffix: str) -> str:
    return f"recipe/{_relative(tag)}/step_{step:07d}{suffix}"


def _wandb_log(logger: Any, step: int, items: Mapping[str, Any]) -> None:
    # the same call WandbLogger.log_metrics makes: the global step rides along as a metric
    logger.experiment.log({**items, "trainer/global_step": step})


def log_image(trainer: pl.Trainer, tag: str, image: np.ndarray, step: int | None = None) -> None:
    """Write an ``(H, W, 3)`` uint8 picture under ``tag`` to every logger."""
    if trainer.is_global_zero:
        settle()
        _write_picture(trainer, tag, Picture(image, png_bytes(image)), _step(trainer, step))


def log_chart(
    trainer: pl.Trainer, tag: str, build: Build | Figure, *args: Any, step: int | None = None, **kwargs: Any
) -> None:
    """Draw ``build(*args, **kwargs)`` (a chart, or a picture array) in the drawing process
    (:mod:`recipe_callbacks.core.drawing`) and write it under ``tag`` at ``step`` (default: the
    global step now) when it is drawn: at a later call of this module, at the latest by
    :func:`settle` with ``wait=True`` at the end of the fit. Only rank 0 draws."""
    if not trainer.is_global_zero:
        return
    if isinstance(build, Figure):  # an already built figure: rendered here
        log_image(trainer, tag, figure_to_image(build), step)
        return
    settle()
    _draw_later(trainer, tag, _step(trainer, step), None, build, *args, **kwargs)


def _draw_later(
    trainer: pl.Trainer, tag: str, s: int, only: frozenset[str] | None, build: Build, *args: Any, **kwargs: Any
) -> None:
    """Send the chart to the drawer; :func:`settle` writes it (to ``only`` those destinations)."""
    _PENDING.append((drawer().submit(build, *args, **kwargs), trainer, tag, s, only))


def drawer() -> Drawer:
    """This process's drawer (its drawing process starts at the first chart)."""
    global _DRAWER
    if _DRAWER is None:
        _DRAWER = Drawer()
    return _DRAWER


def settle(wait: bool = False, timeout: float = 120.0) -> None:
    """Write the held scalars that are due and the pictures drawn so far, in the order they were
    asked for; with ``wait``, all held scalars and every picture, waited for (the end of a fit). A
    picture that could not be drawn is a warning, never an error of the fit."""
    if wait or _held_due():
        write_held_scalars()
    FINISHED[0] = False  # before looking: a drawing finished from now on sets it again
    if not _PENDING:
        return
    for lost in drawer().orphans():
        lost.draw_here()
    while _PENDING and (wait or _PENDING[0][0].done()):
        drawing, trainer, tag, s, only = _PENDING.pop(0)
        picture = drawing.result(timeout)
        if picture is None:
            key = f"draw:{tag}"
            if key not in _FAILED_WRITES:
                _FAILED_WRITES.add(key)
                rank_zero_warn(f"recipe_callbacks: could not draw the picture {tag}: {drawing.error}",
                               category=RecipeWarning)
            continue
        _write_picture(trainer, tag, picture, s, only)


def pending() -> bool:
    """Whether pictures are still on their way or held scalars are due (a cheap check for every hook)."""
    return bool(_PENDING) or _held_due()


def _write_picture(
    trainer: pl.Trainer, tag: str, picture: Picture, s: int, only: frozenset[str] | None = None
) -> None:
    """Write a drawn picture to every logger and the report (``only``: to these logger kinds and
    the ``"files"`` directories alone)."""
    if only is None:
        logged(trainer).add_image(tag, s, picture.image, picture.png)
    for lg in _loggers(trainer):
        kind = logger_kind(lg)
        if only is not None and kind not in only:
            continue
        if kind == "tensorboard":
            _tensorboard_png(lg.experiment, tag, picture, s)
        elif kind == "wandb":
            with _guarded(lg, "pictures"):
                import wandb

                _wandb_log(lg, s, {tag: wandb.Image(picture.image)})
        elif kind == "mlflow":
            with _guarded(lg, "pictures"):
                lg.experiment.log_image(lg.run_id, picture.image, artifact_file=_artifact_file(tag, s, ".png"))
    for directory in _file_dirs(trainer) if only is None or "files" in only else ():
        _file_path(directory, tag, s, ".png").write_bytes(picture.png)


def _tensorboard_png(experiment: Any, tag: str, picture: Picture, step: int) -> None:
    """``add_image`` with the PNG already encoded (PyTorch's writer), else ``add_image`` itself."""
    writer = getattr(experiment, "file_writer", None)
    if not type(experiment).__module__.startswith("torch.utils.tensorboard") or writer is None:
        experiment.add_image(tag, picture.image, global_step=step, dataformats="HWC")
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width, _ = picture.image.shape
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=picture.png)
    writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def log_text(trainer: pl.Trainer, tag: str, text: str, step: int | None = None) -> None:
    """Write Markdown ``text`` under ``tag`` to every logger."""
    if not trainer.is_global_zero:
        return
    s = _step(trainer, step)
    logged(trainer).add_text(tag, s, text)
    for lg in _loggers(trainer):
        kind = logger_kind(lg)
        if kind == "tensorboard":
            lg.experiment.add_text(tag, text, global_step=s)
        elif kind == "wandb":
            with _guarded(lg, "text"):
                import wandb

                _wandb_log(lg, s, {tag: wandb.Html(markdown_to_html(text), inject=False)})
        elif kind == "mlflow":
            with _guarded(lg, "text"):
                lg.experiment.log_text(lg.run_id, text, _artifact_file(tag, s, ".md"))
    for directory in _file_dirs(trainer):
        _file_path(directory, tag, s, ".md").write_text(text, encoding="utf-8")


def log_histogram(trainer: pl.Trainer, tag: str, values: torch.Tensor, step: int | None = None) -> None:
    """Write the distribution of ``values`` under ``tag`` (a PNG bar chart where no histogram API exists)."""
    if not trainer.is_global_zero:
        return
    settle()
    s = _step(trainer, step)
    data = values.detach().flatten().to(torch.float64).cpu()
    data = data[torch.isfinite(data)]
    if data.numel() == 0:
        return
    array = data.numpy()
    wants_picture = bool(_file_dirs(trainer))
    for lg in _loggers(trainer):
        kind = logger_kind(lg)
        if kind == "tensorboard":
            lg.experiment.add_histogram(tag, array, global_step=s)
        elif kind == "wandb":
            with _guarded(lg, "histograms"):
                import wandb

                _wandb_log(lg, s, {tag: wandb.Histogram(np_histogram=np.histogram(array, bins=64))})
        elif kind == "mlflow":
            wants_picture = True
    if wants_picture:  # the picture goes to the loggers without histograms (and the report)
        counts, edges = np.histogram(array, bins=30)
        labels = [f"{e:.2g}" for e in edges[:-1]]
        _draw_later(trainer, tag, s, frozenset({"mlflow", "files"}), bar_chart, labels, counts.tolist(),
                    title=f"{tag}: distribution of {array.size} values", xlabel="bin (left edge)", ylabel="count")


# ----------------------------------------------------------------------------- files of the run
def _mlflow_local_artifacts(logger: Any) -> Path | None:
    """The local directory of an MLflow run's artifacts (a file store), else ``None``."""
    try:
        uri = str(logger.experiment.get_run(logger.run_id).info.artifact_uri)
    except Exception:
        return None
    if uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    if "://" not in uri:
        return Path(uri)
    return None


def log_file(trainer: pl.Trainer, name: str, content: str | bytes) -> list[str]:
    """Write a file of the run (e.g. ``recipe_report.html``) to every logger's own place: the log
    dir of TensorBoard and CSV, the W&B run's files, the MLflow run's artifacts, or
    ``default_root_dir`` without a logger. Returns where it went (paths, or ``mlflow:<run_id>/name``).
    """
    if not trainer.is_global_zero:
        return []
    data = content.encode("utf-8") if isinstance(content, str) else content
    places: list[str] = []
    written: set[Path] = set()

    def to_disk(directory: Path) -> None:
        if directory in written:
            return
        written.add(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
        places.append(str(directory / name))

    for lg in _loggers(trainer):
        if logger_kind(lg) == "mlflow":
            import tempfile

            with _guarded(lg, "report files"), tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / name
                local.write_bytes(data)
                lg.experiment.log_artifact(lg.run_id, str(local))
                local_dir = _mlflow_local_artifacts(lg)
                places.append(str(local_dir / name) if local_dir is not None else f"mlflow:{lg.run_id}/{name}")
        else:
            with _guarded(lg, "report files"):
                directory = _local_dir(lg, trainer)
                if directory is not None:
                    to_disk(directory)
    if not trainer.loggers:
        to_disk(Path(trainer.default_root_dir))
    return places


def log_report_html(trainer: pl.Trainer, key: str, page: str) -> None:
    """Show a whole HTML page on the loggers that display HTML (W&B), at the current step."""
    if not trainer.is_global_zero:
        return
    for lg in _loggers(trainer):
        if logger_kind(lg) == "wandb":
            with _guarded(lg, "HTML report"):
                import wandb

                _wandb_log(lg, _step(trainer, None), {key: wandb.Html(page, inject=False)})


def flush(trainer: pl.Trainer) -> None:
    """Flush what the loggers buffer, so files and event files are complete on disk."""
    if not trainer.is_global_zero:
        return
    for writer in tensorboard_writers(trainer):
        writer.flush()
