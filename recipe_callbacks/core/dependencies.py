"""Dependency matrices from backprop: which outputs depend on which inputs, sample x sample or time x time.

Recipe step 2l ("use backprop to chart dependencies"): make the loss a (weighted) sum of the
outputs of one sample, or of one time step, backpropagate to the input, and see where the gradient
is non-zero. A model that keeps samples apart has a diagonal sample x sample matrix; a causal
sequence model has a lower-triangular time x time matrix.

Every matrix here is ``D[o, i]``: how strongly output slice ``o`` depends on input slice ``i``
along one dimension (the batch dim, or the time dim), measured as the L2 norm of that slice of
the gradient (or of the output change). Gradient mode fills the rows of the probed outputs, one
backward pass each; perturbation mode (for inputs without gradients, e.g. integer token ids that
reach no ``nn.Embedding``) fills the columns of the perturbed inputs, one forward pass each.
Entries that were not measured are NaN.

This module knows nothing of Lightning; it also holds the small hooks the checks need (capture
the output of the first ``nn.Embedding``, record every module's output, keep buffers unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import Self

from recipe_callbacks.core.pictures import matrix_chart

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# ----------------------------------------------------------------------------- small pieces


def probe_indices(size: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(size)``, first and last included.

    Example:
        >>> probe_indices(10, 4)
        [0, 3, 6, 9]
        >>> probe_indices(3, 8)
        [0, 1, 2]
    """
    if size <= 0 or count <= 0:
        return []
    if count >= size:
        return list(range(size))
    if count == 1:
        return [0]
    return sorted({round(k * (size - 1) / (count - 1)) for k in range(count)})


def slice_norms(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """The L2 norm of each slice of ``tensor`` along ``dim``: shape ``(tensor.shape[dim],)``, float64.

    Example:
        >>> slice_norms(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), 0).tolist()
        [5.0, 0.0]
    """
    moved = tensor.detach().to(torch.float64).movedim(dim, 0)
    norms: torch.Tensor = moved.reshape(moved.shape[0], -1).norm(dim=1).cpu()
    return norms


def probe_weights(output: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Fixed random weights shaped like ``output``, from a private generator (the global RNG is untouched).

    The probed "loss" is ``(output[k] * weights[k]).sum()`` rather than a plain sum: a plain sum
    of softmax probabilities is constant, and its gradient would be zero everywhere.
    """
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    return weights.to(device=output.device, dtype=output.dtype)


def relative(matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """Each row (``axis=1``) or column (``axis=0``) divided by its largest finite entry.

    All-zero rows stay zero; NaN (not measured) stays NaN.

    Example:
        >>> relative(torch.tensor([[2.0, 1.0], [0.0, 0.0]]), axis=1).tolist()
        [[1.0, 0.5], [0.0, 0.0]]
    """
    peak = torch.nan_to_num(matrix, nan=0.0).amax(dim=axis, keepdim=True)
    return torch.where(peak > 0, matrix / peak.clamp_min(1e-300), matrix * 0.0)


def relative_to_joint_peak(matrix: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Each row of ``matrix`` divided by the largest finite entry of the same row of ``matrix`` or
    ``other`` (two dependency matrices of the same probes, e.g. on two groups of inputs).

    Example:
        >>> relative_to_joint_peak(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 4.0]])).tolist()
        [[0.25, 0.0]]
    """
    peak = torch.maximum(torch.nan_to_num(matrix, nan=0.0).amax(dim=1, keepdim=True),
                         torch.nan_to_num(other, nan=0.0).amax(dim=1, keepdim=True))
    return torch.where(peak > 0, matrix / peak.clamp_min(1e-300), matrix * 0.0)


def batch_major(output: torch.Tensor, batch_size: int) -> torch.Tensor | None:
    """``output`` as ``(batch_size, ...)``: as it is, or ``(B * k, ...)`` split back into ``(B, k, ...)``.

    The second case is a model that flattens ``(B, T, V)`` logits to ``(B * T, V)`` (sample-major,
    as ``view(-1, V)`` does). ``None`` when the leading dim is no multiple of the batch size.

    Example:
        >>> tuple(batch_major(torch.zeros(6, 5), 2).shape)
        (2, 3, 5)
        >>> batch_major(torch.zeros(5, 5), 2) is None
        True
    """
    if output.ndim == 0 or output.shape[0] % batch_size != 0:
        return None
    if output.shape[0] == batch_size:
        return output
    return output.reshape(batch_size, output.shape[0] // batch_size, *output.shape[1:])


def first_tensor(output: Any) -> torch.Tensor | None:
    """The prediction tensor in what ``forward`` returned.

    A tensor; the ``"logits"``/``"output"``/``"y_hat"`` entry (or first floating tensor) of a dict;
    the first floating tensor of a tuple or list (e.g. a GRU's ``(output, h_n)``); an object's
    ``.logits``. ``None`` when there is none.

    Example:
        >>> first_tensor((torch.ones(2), torch.zeros(1))).tolist()
        [1.0, 1.0]
        >>> first_tensor({"loss": 1.0, "logits": torch.zeros(1)}).tolist()
        [0.0]
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        for key in ("logits", "output", "y_hat", "preds"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]  # type: ignore[no-any-return]
        items: Sequence[Any] = list(output.values())
    elif isinstance(output, (tuple, list)):
        items = output
    else:
        logits = getattr(output, "logits", None)
        return logits if isinstance(logits, torch.Tensor) else None
    for item in items:
        if isinstance(item, torch.Tensor) and item.is_floating_point():
            return item
    return None


def cost_in_steps(forwards: float, backwards: float, samples: int, batch_size: int) -> float:
    """Work in training-step equivalents: a step is one forward and one backward over the batch.

    A backward pass costs about two forward passes, so a step is three forward units; passes over
    ``samples`` samples cost ``samples / batch_size`` of a pass over the training batch.

    Example:
        >>> cost_in_steps(1, 1, 16, 16)
        1.0
        >>> cost_in_steps(1, 4, 4, 16)
        0.75
    """
    return (forwards + 2.0 * backwards) / 3.0 * samples / max(1, batch_size)


# ----------------------------------------------------------------------------- dependency matrices


def dependency_by_gradient(
    output: torch.Tensor,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    indices: Sequence[int],
    *,
    out_dim: int = 0,
    in_dim: int = 0,
    seed: int = 0,
) -> torch.Tensor:
    """``D[o, i]`` for the probed outputs ``o`` in ``indices``: one backward pass per probe.

    Row ``o`` holds the L2 norm of each ``in_dim`` slice of the gradient of
    ``(output.select(out_dim, o) * w).sum()`` with respect to ``inputs`` (fixed random ``w``).
    Gradients are taken with ``torch.autograd.grad`` with respect to ``inputs`` only, so no
    parameter's ``.grad`` changes. ``inputs`` may be any tensor of ``output``'s graph (e.g. an
    embedding output); an output not connected to it gives a zero row.

    Several ``inputs`` (a model with more than one input, each with the same ``in_dim`` size) give
    the norm over all of them: ``sqrt(sum_k D_k[o, i]^2)``.

    Returns:
        ``(output.shape[out_dim], inputs.shape[in_dim])`` float64 on the CPU, NaN outside the probed rows.

    Raises:
        ValueError: when ``output`` does not require grad (no graph to backpropagate through).

    Example:
        >>> x = torch.randn(3, 2, requires_grad=True)
        >>> y = x * 2 + x.mean(0)  # mixes samples through the batch mean
        >>> bool((dependency_by_gradient(y, x, [0])[0] > 0).all())
        True
    """
    if not output.requires_grad:
        raise ValueError("dependency_by_gradient: the output does not require grad; use perturbation")
    leaves = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    matrix = torch.full((output.shape[out_dim], leaves[0].shape[in_dim]), math.nan, dtype=torch.float64)
    weights = probe_weights(output, seed)
    for o in indices:
        target = (output.select(out_dim, o) * weights.select(out_dim, o)).sum()
        grads = torch.autograd.grad(target, leaves, retain_graph=True, allow_unused=True)
        squares = [slice_norms(g, in_dim) ** 2 for g in grads if g is not None]
        matrix[o] = torch.stack(squares).sum(dim=0).sqrt() if squares else 0.0
    return matrix


def differentiable_batch(batch: Any, batch_size: int) -> tuple[Any, list[torch.Tensor], list[torch.Tensor]]:
    """``batch`` with every floating-point tensor of ``batch_size`` samples replaced by a leaf that
    requires grad, the leaves, and the integer tensors of ``batch_size`` samples (token ids: their
    gradient is taken at the output of the ``nn.Embedding`` that embeds them, see :class:`EmbeddingCapture`).

    Dicts, tuples, lists and namedtuples are rebuilt; everything else is kept as it is.

    Example:
        >>> new, leaves, ids = differentiable_batch({"x": torch.zeros(2, 3), "ids": torch.zeros(2, 4).long()}, 2)
        >>> new["x"].requires_grad, len(leaves), len(ids)
        (True, 1, 1)
    """
    leaves: list[torch.Tensor] = []
    ids: list[torch.Tensor] = []

    def walk(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            if item.ndim == 0 or item.shape[0] != batch_size:
                return item
            if item.is_floating_point() or item.is_complex():
                leaf = item.detach().clone().requires_grad_(True)
                leaves.append(leaf)
                return leaf
            if item.dtype != torch.bool:
                ids.append(item)
            return item
        if isinstance(item, Mapping):
            return type(item)({k: walk(v) for k, v in item.items()})  # type: ignore[call-arg]
        if isinstance(item, tuple) and hasattr(item, "_fields"):
            return type(item)(*(walk(v) for v in item))
        if isinstance(item, (list, tuple)):
            return type(item)(walk(v) for v in item)
        return item

    return walk(batch), leaves, ids


def floating_tensors(batch: Any, batch_size: int) -> list[torch.Tensor]:
    """The floating-point tensors of ``batch_size`` samples in ``batch``, in the order
    :func:`differentiable_batch` visits them (its leaves, before they were made leaves).

    Example:
        >>> [tuple(t.shape) for t in floating_tensors({"x": torch.zeros(2, 3), "ids": torch.zeros(2).long()}, 2)]
        [(2, 3)]
    """
    found: list[torch.Tensor] = []

    def walk(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            if item.ndim > 0 and item.shape[0] == batch_size and (item.is_floating_point() or item.is_complex()):
                found.append(item)
        elif isinstance(item, Mapping):
            for v in item.values():
                walk(v)
        elif isinstance(item, (list, tuple)):
            for v in item:
                walk(v)

    walk(batch)
    return found


def carries(tensor: torch.Tensor, target: torch.Tensor | None) -> bool:
    """Whether ``tensor`` is the target (or equal to it): a decoder input that carries the answer.

    Example:
        >>> t = torch.tensor([[1, 2, 3]])
        >>> carries(t.clone(), t), carries(t + 1, t)
        (True, False)
    """
    if target is None:
        return False
    if tensor is target:
        return True
    return tensor.shape == target.shape and tensor.dtype == target.dtype and bool(torch.equal(tensor, target))


def perturbed(x: torch.Tensor, dim: int, index: int, generator: torch.Generator) -> torch.Tensor:
    """A copy of ``x`` with slice ``index`` along ``dim`` changed, everything else equal.

    Integer inputs (token ids) move to the next id within the ids seen in ``x``; float inputs
    get Gaussian noise of the size of ``x``'s spread.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> perturbed(torch.tensor([[0, 1], [2, 0]]), 1, 0, g).tolist()
        [[1, 1], [0, 0]]
    """
    out = x.detach().clone()
    piece = out.select(dim, index)
    if x.is_floating_point() or x.is_complex():
        scale = float(x.detach().float().std()) if x.numel() > 1 else 1.0
        scale = scale if math.isfinite(scale) and scale > 0 else 1.0
        noise = torch.randn(piece.shape, generator=generator, dtype=torch.float64) * scale
        piece.add_(noise.to(device=x.device, dtype=x.dtype))
    else:
        vocab = max(int(x.max()) + 1, 2)
        piece.copy_((piece + 1) % vocab)
    return out


def dependency_by_perturbation(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    indices: Sequence[int],
    *,
    out_dim: int = 0,
    in_dim: int = 0,
    seed: int = 0,
) -> torch.Tensor:
    """``D[o, i]`` for the perturbed inputs ``i`` in ``indices``: one forward pass per probe.

    Column ``i`` holds the L2 norm of each ``out_dim`` slice of ``forward(x_i) - forward(x)``,
    where ``x_i`` is ``x`` with only slice ``i`` along ``in_dim`` changed. ``forward`` must be
    deterministic (same dropout masks on every call).

    Returns:
        ``(n_out, x.shape[in_dim])`` float64 on the CPU, NaN outside the perturbed columns.

    Example:
        >>> net = lambda t: t.cumsum(1)  # output t depends on inputs <= t
        >>> m = dependency_by_perturbation(net, torch.zeros(1, 3), [1], out_dim=1, in_dim=1)
        >>> (m[:, 1] > 0).tolist()
        [False, True, True]
    """
    with torch.no_grad():
        base = forward(x).detach()
        matrix = torch.full((base.shape[out_dim], x.shape[in_dim]), math.nan, dtype=torch.float64)
        generator = torch.Generator().manual_seed(seed)
        for i in indices:
            changed = forward(perturbed(x, in_dim, i, generator)).detach()
            matrix[:, i] = slice_norms(changed - base, out_dim)
    return matrix


# ----------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Dependency:
    """One unexpected entry of a relative dependency matrix: output ``out`` depends on input ``source``."""

    out: int
    source: int
    strength: float


def off_diagonal(rel: torch.Tensor, tolerance: float) -> list[Dependency]:
    """Entries ``o != i`` above ``tolerance``: outputs of one sample depending on another sample.

    Example:
        >>> off_diagonal(torch.tensor([[1.0, 0.5], [0.0, 1.0]]), 1e-4)
        [Dependency(out=0, source=1, strength=0.5)]
    """
    mask = torch.nan_to_num(rel, nan=0.0) > tolerance
    mask.fill_diagonal_(False)
    return [Dependency(int(o), int(i), float(rel[o, i])) for o, i in mask.nonzero().tolist()]


def future(rel: torch.Tensor, tolerance: float, strict: bool = False) -> list[Dependency]:
    """Entries where output time ``t`` depends on input time ``s > t`` (``s >= t`` when ``strict``).

    Example:
        >>> future(torch.tensor([[1.0, 0.5], [1.0, 1.0]]), 1e-4)
        [Dependency(out=0, source=1, strength=0.5)]
        >>> len(future(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), 1e-4, strict=True))
        0
    """
    n_out, n_in = rel.shape
    rows = torch.arange(n_out).unsqueeze(1)
    cols = torch.arange(n_in).unsqueeze(0)
    ahead = cols >= rows if strict else cols > rows
    mask = (torch.nan_to_num(rel, nan=0.0) > tolerance) & ahead
    return [Dependency(int(o), int(i), float(rel[o, i])) for o, i in mask.nonzero().tolist()]


def largest(dependencies: Sequence[Dependency]) -> float:
    """The strongest of ``dependencies`` (0.0 when there are none)."""
    return max((d.strength for d in dependencies), default=0.0)


@dataclass
class LayerScan:
    """Where mixing across samples first appears among recorded module outputs (in the order they ran)."""

    first_mixed: int | None
    last_clean: int | None
    leaks: list[float] = field(default_factory=list)  # per recorded output; NaN: not judged
    backwards: int = 0


def first_mixing_output(
    outputs: Sequence[torch.Tensor],
    inputs: torch.Tensor,
    probe: int,
    tolerance: float,
    seed: int = 0,
) -> LayerScan:
    """Scan module outputs in the order they ran for the first whose sample ``probe`` depends on other samples.

    Each output is judged like the model output: the gradient of sample ``probe``'s slice with
    respect to ``inputs`` (batch dim 0) must vanish at every other sample. Outputs whose leading
    dim is no multiple of the batch size, or that are not connected to ``inputs``, are not judged.

    Example:
        >>> x = torch.randn(4, 3, requires_grad=True)
        >>> a = x * 2
        >>> b = a - a.mean(0)  # the batch mean: mixing starts here
        >>> scan = first_mixing_output([a, b, b + 1], x, probe=0, tolerance=1e-4)
        >>> scan.first_mixed, scan.last_clean
        (1, 0)
    """
    batch_size = inputs.shape[0]
    scan = LayerScan(first_mixed=None, last_clean=None)
    for k, raw in enumerate(outputs):
        out = batch_major(raw, batch_size)
        if out is None or not out.requires_grad or not out.is_floating_point():
            scan.leaks.append(math.nan)
            continue
        row = dependency_by_gradient(out, inputs, [probe], seed=seed)[probe : probe + 1]
        scan.backwards += 1
        if not bool((row > 0).any()):  # not connected to the input (e.g. a positional embedding)
            scan.leaks.append(math.nan)
            continue
        leak = largest(off_diagonal_row(relative(row, axis=1)[0], probe, tolerance))
        scan.leaks.append(leak)
        if leak > 0:
            scan.first_mixed = k
            return scan
        scan.last_clean = k
    return scan


def off_diagonal_row(row: torch.Tensor, probe: int, tolerance: float) -> list[Dependency]:
    """Entries of one relative row (output ``probe``) above ``tolerance`` at other samples."""
    return [
        Dependency(probe, i, float(v)) for i, v in enumerate(row.tolist()) if i != probe and v > tolerance
    ]


# ----------------------------------------------------------------------------- hooks and state


@contextmanager
def restored_buffers(module: nn.Module) -> Iterator[None]:
    """Put every buffer's value back on exit (a forward in train mode may update running statistics)."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def batchnorm_in_eval(module: nn.Module) -> int:
    """Put every BatchNorm layer (``_BatchNorm``: 1d/2d/3d, SyncBatchNorm, lazy) in eval mode.

    Batch statistics mix samples by design; in eval mode the layer uses its running statistics
    and keeps samples apart. Returns how many layers were switched. Callers restore the modes.
    """
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.eval()
    return len(layers)


class _ForwardHooks:
    """Forward hooks on the submodules of ``module`` that :meth:`_wanted` selects, while the context is active."""

    module: nn.Module
    _handles: list[RemovableHandle]

    def _wanted(self, name: str, sub: nn.Module) -> bool:
        raise NotImplementedError

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for name, sub in self.module.named_modules():
            if self._wanted(name, sub):
                self._handles.append(sub.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class EmbeddingCapture(_ForwardHooks):
    """Hooks every ``nn.Embedding`` and keeps the output of the call that embeds the token ids ``x``.

    That output is where gradients are taken for integer inputs (ids have none). It is made to
    require grad if the embedding is frozen. Use as a context manager around the forward pass.
    """

    def __init__(self, module: nn.Module, token_ids: torch.Tensor) -> None:
        self.module = module
        self.token_ids = token_ids
        self.output: torch.Tensor | None = None
        self.name = ""
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
        def hook(_module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if self.output is not None or not args or not isinstance(output, torch.Tensor):
                return None
            ids = args[0]
            same = ids is self.token_ids or (
                isinstance(ids, torch.Tensor)
                and ids.shape == self.token_ids.shape
                and torch.equal(ids, self.token_ids)
            )
            if not same:
                return None
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
            self.output, self.name = output, name
            return output

        return hook

    def _wanted(self, name: str, sub: nn.Module) -> bool:
        return isinstance(sub, nn.Embedding)


class OutputRecorder(_ForwardHooks):
    """Records the output tensor of every submodule call, in the order the calls finish.

    A container's output is recorded after its children's, so the first mixed output in this
    order names the innermost module (or the container whose own ``forward`` code) that mixed.
    The root module is not recorded (its output is the model output). At most ``limit`` calls.
    """

    def __init__(self, module: nn.Module, limit: int = 512) -> None:
        self.module = module
        self.limit = limit
        self.names: list[str] = []
        self.outputs: list[torch.Tensor] = []
        self._calls: dict[str, int] = {}
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            tensor = first_tensor(output)
            if tensor is None or len(self.outputs) >= self.limit:
                return
            calls = self._calls[name] = self._calls.get(name, 0) + 1
            self.names.append(name if calls == 1 else f"{name} (call {calls})")
            self.outputs.append(tensor)

        return hook

    def kind(self, index: int) -> str:
        """The class name of the module behind recorded output ``index``."""
        name = self.names[index].split(" (call ")[0]
        return type(self.module.get_submodule(name)).__name__

    def _wanted(self, name: str, sub: nn.Module) -> bool:
        return bool(name)


# ----------------------------------------------------------------------------- picture


def dependency_picture(
    rel: torch.Tensor,
    flagged: Sequence[Dependency] = (),
    *,
    floor: float = 1e-6,
    title: str = "",
    xlabel: str = "input sample",
    ylabel: str = "output sample",
    flagged_label: str = "dependency that should be 0",
) -> Figure:
    """A relative dependency matrix as a figure: rows are outputs, columns the inputs they depend on.

    Colour is the relative strength on a log scale from ``floor`` (dark, no dependency) to 1
    (yellow, the strongest dependency of that probe), with a colour bar; only the probed rows
    (columns) are drawn, labelled with their index; the ``flagged`` entries (dependencies that
    should not exist) are outlined in red.

    Example:
        >>> from recipe_callbacks.core.pictures import figure_to_image
        >>> figure_to_image(dependency_picture(torch.eye(3))).shape
        (360, 480, 3)
    """
    values = rel.detach().to(torch.float64).cpu()
    measured = ~torch.isnan(values)
    rows = [int(i) for i in torch.nonzero(measured.any(dim=1)).flatten()] or list(range(values.shape[0]))
    cols = [int(j) for j in torch.nonzero(measured.any(dim=0)).flatten()] or list(range(values.shape[1]))
    where_row, where_col = {r: k for k, r in enumerate(rows)}, {c: k for k, c in enumerate(cols)}
    marks = [(where_row[d.out], where_col[d.source]) for d in flagged if d.out in where_row and d.source in where_col]
    return matrix_chart(
        values[rows][:, cols], title=title, xlabel=xlabel, ylabel=ylabel, log_scale=True, vmin=floor, vmax=1.0,
        colorbar_label="relative dependency (log scale)", marks=marks, marks_label=flagged_label,
        x_values=[float(c) for c in cols], y_values=[float(r) for r in rows],
    )
