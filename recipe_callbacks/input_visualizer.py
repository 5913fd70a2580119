"""InputVisualizer (recipe step 2j, visualize just before the net): log and judge what enters the model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, get_args

import torch
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from recipe_callbacks.core.data_stats import bounded_loader, first_dataloader
from recipe_callbacks.core.input_stats import (
    FLAG_NAMES,
    FLAG_STATUS,
    ChannelStats,
    Flag,
    ImageFormat,
    Layout,
    channel_stats,
    display_tiles,
    guess_layout,
    input_flags,
    is_class_index,
    to_nchw,
)
from recipe_callbacks.core.pictures import image_grid
from recipe_callbacks.plumbing.batch import BatchToXY, resolve_batch
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail, Status
from recipe_callbacks.plumbing.ranks import sum_over_ranks
from recipe_callbacks.plumbing.validation import check_choice, check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl

# A batch of one target value is judged against the value's frequency over this many training targets,
# and let pass when a batch like it turns up by chance at least this often.
_PRIOR_SAMPLES = 4096
_CHANCE = 1e-3

# Scalars per channel for at most this many channels; the text table lists a few more.
MAX_CHANNEL_SCALARS = 16
MAX_CHANNEL_ROWS = 32
# Values drawn into a histogram (the first samples of a large batch).
MAX_HISTOGRAM_VALUES = 1 << 20
# Largest side of an image tile in the picture (larger images are drawn at a stride).
MAX_TILE_SIDE = 512

_ADVICE = {
    "non_finite": "find where the NaN/Inf enter (missing values in the data, a division by zero, a log of 0 in "
    "preprocessing); torch.isfinite(x).all() in the dataset's __getitem__ finds the sample",
    "constant": "the model gets no information: check the data pipeline (a transform that zeroes or a wrong key)",
    "identical_samples": "the loader repeats one sample: check __getitem__ (an index that is ignored) and the sampler",
    "unnormalised": "normalise the input (subtract the mean and divide by the std per channel; for 8-bit images "
    "divide by 255 first); raise max_rms if this scale is intended",
    "integer_pixels": "convert to float and normalise (e.g. torchvision ToTensor / ToDtype(scale=True) and Normalize)",
    "dead_channel": "check the channel order and the colour conversion (e.g. a greyscale image copied into RGB "
    "with two zero channels)",
    "channels_last": "if the model expects (N, C, H, W), permute with x.permute(0, 3, 1, 2); if channels-last is "
    "intended, set image_format='NHWC'",
    "non_finite_targets": "find where NaN/Inf enter the targets (missing labels)",
    "one_target_value": "one batch can be all one class by chance on an imbalanced set; if it repeats, check the "
    "sampler and the label column (DataInspector counts the whole set)",
}


# What each flag says, formatted with its numbers.
_FLAG_TEXT = {
    "non_finite": "the input holds {nan} NaN and {inf} Inf values (of {numel})",
    "constant": "every value of the input equals {value:.4g}: the model sees nothing",
    "identical_samples": "all {n} samples of the batch are identical",
    "integer_pixels": "the images reach the model as {dtype} ({low:.4g}..{high:.4g}), not as normalised floats",
    "unnormalised": "the input looks unnormalised: channel {channel} has mean {mean:.4g} and std {std:.4g} (root mean "
    "square {rms:.4g} > max_rms={max_rms:.4g}); range {low:.4g}..{high:.4g}{like}",
    "dead_channel": "image channel(s) {channels} are constant across the whole batch",
    "channels_last": "the batch of shape {shape} looks channels-last (N, H, W, C): dim 1 ({dim1}) looks like a spatial "
    "dim and the last dim ({last}) like channels",
    "non_finite_targets": "the targets hold NaN or Inf values",
    "one_target_value": "all {n} targets of the batch are {value!r}",
}


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _message(flag: Flag) -> str:
    like = ", like raw 0..255 pixels" if flag.numbers.get("pixels") else ""
    return _FLAG_TEXT[flag.name].format(**flag.numbers, like=like)


class InputVisualizer(RecipeCallback):
    """Visualize just before the net (recipe step 2j): log and check the batch exactly as ``training_step`` gets it.

    On the first training batch (and every ``every_n_steps`` optimizer steps when set) it looks at
    the batch in ``on_train_batch_start``, i.e. after the transfer to the device and
    ``on_after_batch_transfer``. 4-D image batches become a picture: a grid of images with 1 or 3
    channels, captioned with the label when the targets are class indices; with other channel
    counts a grid with one grey tile per channel and a row per sample. Every input also becomes a
    histogram, and its per-channel mean/std/min/max, NaN/Inf counts, dtype and shape are logged.

    It flags: NaN or Inf in the input (``fail``), a constant input or a batch of identical samples
    (``fail``), an input that looks unnormalised (a channel's root mean square above ``max_rms``,
    e.g. raw 0..255 pixels) or uint8 images (``warn``), a constant image channel (``warn``), a 4-D
    batch that looks channels-last where PyTorch expects channels-first (``warn``), NaN/Inf targets
    (``fail``) and targets that are all one value in a batch of at least 8 (``warn``). Labels that do
    not match the images, or swapped colour channels (RGB/BGR), cannot be judged by statistics:
    look at the captioned grid. The work happens only on the steps it logs; it never touches the
    model or the RNG. Flags are summed over all ranks, so every rank reaches the same verdict.

    Args:
        every_n_steps: also log every this many optimizer steps; ``None`` logs the first batch only.
        max_images: the most tiles drawn in the picture.
        image_format: ``"auto"`` guesses from the shape (4-D only); ``"NCHW"`` or ``"NHWC"`` says
            how 4-D inputs are laid out (no channels-last warning then); ``"none"``: never images.
        channel_dim: the channel dim of non-image inputs for per-channel statistics (default 1,
            e.g. the features of ``(N, D)``; ``None`` treats 1-D inputs as one channel).
        max_rms: a floating-point channel whose root mean square ``sqrt(mean**2 + std**2)`` exceeds
            this looks unnormalised (a standardised channel has 1; raw pixels about 100).
        on_fail: ``"warn"``, ``"raise"`` or ``"ignore"``.
        input_key: where the input is in a batch (dict key or position); inferred when ``None``.
        target_key: where the target is in a batch; inferred when ``None``.
        batch_to_xy: a function ``batch -> (x, y)`` for any other batch.

    Raises:
        ValueError: a count below 1, ``max_rms`` not positive, ``channel_dim=0``, or an unknown
            ``image_format`` / ``on_fail``.
        TypeError: an argument of the wrong type.

    Logged (at the steps it looks at):
        - ``recipe.input_visualizer/images``: the image grid (image inputs only).
        - ``recipe.input_visualizer/input_values``: histogram of the input's values.
        - ``recipe.input_visualizer/targets``: histogram of the targets (numeric targets only).
        - ``recipe.input_visualizer/mean``, ``.../std``, ``.../min``, ``.../max``, ``.../nan_count``,
          ``.../inf_count``, ``.../max_channel_rms``: scalars over the whole input, with
          ``every_n_steps`` set (a single look at the first batch is in the text and the Finding).
        - ``recipe.input_visualizer/channel_<c>/mean``, ``.../std``, ``.../min``, ``.../max``: scalars of
          the first 16 channels, with ``every_n_steps`` set.
        - ``recipe.input_visualizer/summary``: text with shape, dtype, layout, a table per channel,
          the targets and the flags.

    Example::

        Trainer(callbacks=[InputVisualizer(every_n_steps=1000), RecipeReport()])
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        max_images: int = 32,
        image_format: ImageFormat = "auto",
        channel_dim: int | None = 1,
        max_rms: float = 5.0,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
    ) -> None:
        super().__init__(on_fail=on_fail, input_key=input_key, target_key=target_key, batch_to_xy=batch_to_xy)
        owner = "InputVisualizer"
        self.every_n_steps = None if every_n_steps is None else check_int(owner, "every_n_steps", every_n_steps)
        self.max_images = check_int(owner, "max_images", max_images)
        self.image_format: ImageFormat = check_choice(owner, "image_format", image_format, get_args(ImageFormat))
        if channel_dim is not None:
            if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
                raise TypeError(f"{owner}(channel_dim={channel_dim!r}): channel_dim must be an int or None")
            if channel_dim == 0:
                raise ValueError(f"{owner}(channel_dim=0): channel_dim must not be 0, the batch dim")
        self.channel_dim = channel_dim
        self.max_rms = check_float(owner, "max_rms", max_rms)
        self._first_pending = False
        self._last_step = -1
        self._last_flags: tuple[str, ...] = ()

    # ----------------------------------------------------------------- when to look
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._first_pending = True
        self._last_step = -1

    def _due(self, step: int) -> bool:
        if step == self._last_step:  # gradient accumulation: one look per optimizer step
            return False
        if self._first_pending:
            return True
        return self.every_n_steps is not None and step % self.every_n_steps == 0

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        step = trainer.global_step
        if not self._due(step):
            return
        first = self._first_pending
        self._first_pending = False
        self._last_step = step
        resolved = self.resolve(trainer, batch)
        if resolved is None:
            return
        # One copy of the batch to the host, then statistics, flags and pictures read it there: not
        # a device read per statistic. The copy keeps dtype and memory layout (channels-last stays).
        x = resolved.x.detach().cpu()
        y = resolved.y.detach().cpu() if isinstance(resolved.y, torch.Tensor) else resolved.y
        with self.stopwatch() as watch:  # the statistics and the pictures: what the look costs
            self._look(trainer, x, y, first)
        self.state_cost(watch.seconds, key="" if first else "later")

    # ----------------------------------------------------------------- the look
    def _layout(self, x: torch.Tensor) -> tuple[Layout, bool]:
        layout = guess_layout(tuple(x.shape), self.image_format)
        return layout, self.image_format == "auto"

    def _stats(self, x: torch.Tensor, layout: Layout) -> ChannelStats:
        if layout != "none":
            return channel_stats(to_nchw(x, layout), 1)
        dim = self.channel_dim if x.ndim >= 2 and self.channel_dim is not None else None
        if dim is not None and not -x.ndim <= dim < x.ndim:
            dim = None
        return channel_stats(x, dim)

    def _look(self, trainer: pl.Trainer, x: torch.Tensor, y: torch.Tensor | None, first: bool) -> None:
        layout, guessed = self._layout(x)
        stats = self._stats(x, layout)
        flags = input_flags(x, stats, y, layout=layout, guessed=guessed, max_rms=self.max_rms)
        if y is not None and any(f.name == "one_target_value" for f in flags) and self._by_chance(trainer, y):
            flags = [f for f in flags if f.name != "one_target_value"]
        names = self._flags_on_any_rank(trainer, flags)
        overall = stats.overall()
        values = {
            "mean": overall["mean"], "std": overall["std"], "min": overall["min"], "max": overall["max"],
            "nan_count": overall["nan"], "inf_count": overall["inf"],
            "max_channel_rms": float(torch.nan_to_num(stats.rms, nan=0.0).max()) if stats.channels else 0.0,
        }
        if self.every_n_steps is not None:  # a series; a single look is in the text summary and the Finding
            self.log_scalars(trainer, {**values, **self._channel_scalars(stats)})
        self._log_pictures(trainer, x, y, layout)
        self.log_text(trainer, "summary", self._summary_text(x, y, layout, stats, flags, names))
        self._report(trainer, x, layout, flags, names, values, first)

    def _by_chance(self, trainer: pl.Trainer, y: torch.Tensor) -> bool:
        """Whether a batch of one target value is likely by chance: the value's frequency ``f`` over
        up to ``_PRIOR_SAMPLES`` training targets (read from the data set, not one batch) is below 1
        but ``f ** n`` is not negligible (a 1:9 task gives an all-negative batch of 32 in 3% of batches)."""
        loader = first_dataloader(trainer.train_dataloader)
        if loader is None:
            return False
        value = y.reshape(-1)[0].item()
        same = total = 0
        try:
            bounded, _ = bounded_loader(loader, _PRIOR_SAMPLES, reading=True)
            with isolate_rng():
                for batch in bounded:
                    resolved = resolve_batch(batch, self.input_key, self.target_key, self.batch_to_xy)
                    if resolved.y is None:
                        return False
                    same += int((resolved.y == value).sum())
                    total += resolved.y.numel()
        except Exception:  # reading the data again must not stop training
            return False
        if total == 0:
            return False
        frequency = same / total
        return frequency < 1.0 and frequency ** y.numel() >= _CHANCE

    @staticmethod
    def _flags_on_any_rank(trainer: pl.Trainer, flags: list[Flag]) -> tuple[str, ...]:
        """The flags raised on any rank (a sum over ranks of a 0/1 vector), so all ranks agree."""
        local = torch.tensor([float(any(f.name == n for f in flags)) for n in FLAG_NAMES], dtype=torch.float64)
        (raised,) = sum_over_ranks(trainer, [local])
        return tuple(n for n, v in zip(FLAG_NAMES, raised.tolist(), strict=True) if v > 0)

    def _channel_scalars(self, stats: ChannelStats) -> dict[str, float]:
        out: dict[str, float] = {}
        for c in range(min(stats.channels, MAX_CHANNEL_SCALARS)):
            for name, series in (("mean", stats.mean), ("std", stats.std), ("min", stats.min), ("max", stats.max)):
                out[f"channel_{c}/{name}"] = float(series[c])
        return out

    def _log_pictures(self, trainer: pl.Trainer, x: torch.Tensor, y: torch.Tensor | None, layout: Layout) -> None:
        if not trainer.is_global_zero:
            return
        if layout != "none":
            images = to_nchw(x, layout).detach()
            tiles, shown, cols = display_tiles(images, self.max_images)
            labels = [f"y={int(v)}" for v in y[:shown].tolist()] if y is not None and is_class_index(y, len(x)) else []
            captions = labels
            if cols:  # one tile per channel: "c<j>", the label on the first tile of each row
                captions = [
                    (f"{labels[i // cols]} " if labels and i % cols == 0 else "") + f"c{i % cols}"
                    for i in range(len(tiles))
                ]
            # Very large images are drawn at a stride, so the picture stays about 512 px per tile at most.
            stride = max(1, -(-max(tiles.shape[-2:]) // MAX_TILE_SIDE))
            tiles = tiles[..., ::stride, ::stride]
            self.log_figure(trainer, "images", image_grid, tiles.float().cpu(), ncols=cols or None,
                            captions=captions or None)
        flat = x.detach().reshape(-1)[:MAX_HISTOGRAM_VALUES]
        self.log_histogram(trainer, "input_values", flat.float())
        if y is not None and not y.is_complex():
            self.log_histogram(trainer, "targets", y.detach().reshape(-1)[:MAX_HISTOGRAM_VALUES].float())

    def _summary_text(self, x: torch.Tensor, y: torch.Tensor | None, layout: Layout, stats: ChannelStats,
                      flags: list[Flag], names: tuple[str, ...]) -> str:
        overall = stats.overall()
        lines = [
            f"**input** shape `{tuple(x.shape)}`, dtype `{x.dtype}`, device `{x.device}`, layout `{layout}`",
            "",
            f"overall: mean {_fmt(overall['mean'])}, std {_fmt(overall['std'])}, min {_fmt(overall['min'])}, "
            f"max {_fmt(overall['max'])}, NaN {int(overall['nan'])}, Inf {int(overall['inf'])}",
            "",
            "| channel | mean | std | min | max | NaN | Inf |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in range(min(stats.channels, MAX_CHANNEL_ROWS)):
            lines.append(
                f"| {c} | {_fmt(float(stats.mean[c]))} | {_fmt(float(stats.std[c]))} | {_fmt(float(stats.min[c]))} "
                f"| {_fmt(float(stats.max[c]))} | {int(stats.nan[c])} | {int(stats.inf[c])} |"
            )
        if stats.channels > MAX_CHANNEL_ROWS:
            lines.append(f"| ... | {stats.channels - MAX_CHANNEL_ROWS} more channels | | | | | |")
        lines.append("")
        if y is None:
            lines.append("**targets**: none found in the batch")
        else:
            head = y.detach().reshape(-1)[:16].tolist()
            lines.append(f"**targets** shape `{tuple(y.shape)}`, dtype `{y.dtype}`, first values `{head}`")
        lines.append("")
        local = {f.name for f in flags}
        lines.append("**flags**: " + ("; ".join(self._flag_text(n, flags) for n in names) if names else "none"))
        if local - set(names):  # cannot happen, but keep the text honest if it did
            lines.append(f"(local flags {sorted(local)})")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _flag_text(name: str, flags: list[Flag]) -> str:
        local = next((f for f in flags if f.name == name), None)
        return _message(local) if local is not None else f"{name.replace('_', ' ')} (seen on another rank)"

    def _report(self, trainer: pl.Trainer, x: torch.Tensor, layout: Layout, flags: list[Flag], names: tuple[str, ...],
                values: dict[str, float], first: bool) -> None:
        status: Status = "pass"
        if names:
            status = "fail" if any(FLAG_STATUS[n] == "fail" for n in names) else "warn"
        where = "the first training batch" if first else f"the training batch at step {trainer.global_step}"
        shape = f"shape {tuple(x.shape)}, {str(x.dtype).removeprefix('torch.')}, layout {layout}"
        summary = f"{where} ({shape}): " + "; ".join(self._flag_text(n, flags) for n in names) if names else (
            f"{where} ({shape}) looks healthy: finite, mean {_fmt(values['mean'])}, std {_fmt(values['std'])}, "
            f"range {_fmt(values['min'])}..{_fmt(values['max'])}")
        advice = " ".join(f"{n.replace('_', ' ').capitalize()}: {_ADVICE[n]}." for n in names)
        if not first and (not names or names == self._last_flags):
            self._last_flags = names
            return  # later looks report only when the set of flags changes
        self._last_flags = names
        values = {**values, "cost_steps": 0.0}
        self.report(trainer, status, summary, values, advice, key="" if first else "later")

