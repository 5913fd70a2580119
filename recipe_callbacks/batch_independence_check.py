"""BatchIndependenceCheck: recipe step 2l, use backprop to chart dependencies across the batch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from typing_extensions import override

from recipe_callbacks.core.dependencies import (
    Dependency,
    LayerScan,
    batch_major,
    cost_in_steps,
    dependency_by_gradient,
    dependency_by_perturbation,
    dependency_picture,
    first_mixing_output,
    largest,
    off_diagonal,
    probe_indices,
    relative,
)
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.plumbing.batch import BatchToXY, ForwardFn, ResolvedBatch
from recipe_callbacks.plumbing.dependency_check import METHODS, Method, OneOffDependencyCheck
from recipe_callbacks.plumbing.finding import OnFail
from recipe_callbacks.plumbing.validation import check_bool, check_choice, check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl


@dataclass
class _Measurement:
    rel: torch.Tensor  # (B, B) relative dependency, NaN where not measured
    probes: list[int]
    method: str
    leaks: list[Dependency]
    cost: float
    where: str  # what the gradient was taken at
    scan: LayerScan | None
    names: list[str]
    kinds: list[str]
    batchnorms: int


class BatchIndependenceCheck(OneOffDependencyCheck):
    """Checks that the model's output for one sample depends on no other sample of the batch.

    On the first training batch of the fit: the "loss" is a fixed random weighting of the
    outputs of sample ``i``; its gradient with respect to the input must be zero at every other
    sample (relative to the largest gradient, within ``max_dependency``) for a few probed ``i``. A
    ``view``/``reshape`` that moves the batch dimension, or statistics over the batch in
    ``forward``, make samples leak into each other; the Finding then names which samples leak
    into which and the first module whose output shows the mixing (forward hooks on every
    submodule, re-checked at each output in the order they ran).

    The model is run as in training (dropout on, under an isolated RNG) except BatchNorm layers,
    which mix the batch by design and are put in eval mode for the check (not replaced).
    Gradients are taken with ``torch.autograd.grad`` with respect to the input only, so no
    parameter ``.grad`` changes; train/eval modes and every buffer are restored afterwards, so the
    training run is unchanged. Integer inputs (token ids) are differentiated at the output of the
    ``nn.Embedding`` that embeds them; without one, each probed sample's input is perturbed
    instead and the other samples' outputs watched. Does not run on a resumed run.

    Args:
        num_probes: how many samples ``i`` to probe (spread over the batch); each costs one
            backward pass over the batch.
        max_dependency: largest cross-sample gradient allowed, relative to the largest gradient of the
            same probe; a model that keeps samples apart has exactly zero.
        train_mode: run the model in its training mode with only BatchNorm in eval (``True``), or
            the whole model in eval mode (``False``, misses mixing that happens only in training).
        method: ``"gradient"``, ``"perturbation"``, or ``"auto"`` (gradients where the input or
            its embedding has them, perturbation otherwise).
        on_fail: ``"warn"``, ``"raise"`` or ``"ignore"`` (see :class:`RecipeCallback`).
        input_key: where the input is in a batch; inferred when ``None``.
        target_key: where the target is in a batch; inferred when ``None``.
        batch_to_xy: a function ``batch -> (x, y)`` for other batch shapes.
        forward_fn: how to run the model the way your step does (a method name or a function
            ``(pl_module, batch) -> output``); see :class:`~recipe_callbacks.RecipeCallback`.

    Raises:
        ValueError: for a non-positive ``num_probes`` or ``max_dependency``, or an unknown ``method``.
        TypeError: for arguments of the wrong type.

    Logged:
        - ``recipe.batch_independence_check/finding``: text, the Finding with its values
          ``max_leak`` (largest relative cross-sample dependency), ``leaking_pairs`` ((output
          sample, input sample) pairs above ``max_dependency``), ``num_probes`` (samples probed) and
          ``cost_steps`` (cost in training-step equivalents).
        - ``recipe.batch_independence_check/dependency_matrix``: figure, probed output sample (rows)
          x input sample (columns), log colour scale with a colour bar, leaks outlined in red.
        - ``recipe.batch_independence_check/layer_scan``: text, on failure: each module output's
          leak in the order they ran, up to the first mixed one.

    Example::

        trainer = Trainer(callbacks=[BatchIndependenceCheck(num_probes=4)])
    """

    sharded_reason: ClassVar[str] = (
        "it runs its own forward and backward passes outside the training step, which a sharded model "
        "only takes inside the strategy's collectives"
    )

    def __init__(
        self,
        num_probes: int = 4,
        max_dependency: float = 1e-4,
        train_mode: bool = True,
        method: Method = "auto",
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
        forward_fn: ForwardFn | str | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy, forward_fn)
        owner = type(self).__name__
        self.num_probes = check_int(owner, "num_probes", num_probes)
        self.max_dependency = check_float(owner, "max_dependency", max_dependency, maximum=1.0)
        self.train_mode = check_bool(owner, "train_mode", train_mode)
        self.method: Method = check_choice(owner, "method", method, METHODS)

    # ----------------------------------------------------------------- measuring
    @override
    def _measure(self, pl_module: pl.LightningModule, batch: Any, resolved: ResolvedBatch) -> _Measurement:
        x = resolved.x
        batch_size = x.shape[0] if x.ndim > 0 else 0
        if batch_size < 2:
            raise CheckSkipped(f"the batch holds {batch_size} sample(s); samples can only mix in a batch of 2 or more")
        probes = probe_indices(batch_size, self.num_probes)

        def per_sample(out: torch.Tensor) -> torch.Tensor:
            major = batch_major(out, batch_size)
            if major is None:
                raise CheckSkipped(
                    f"the output's leading dim ({out.shape[0]}) is not the batch size ({batch_size}) or a "
                    "multiple of it, so the output of one sample cannot be told apart", "forward_fn"
                )
            return major

        def forward(inp: torch.Tensor) -> torch.Tensor:
            return per_sample(self._model_output(pl_module, batch, resolved, inp))

        with self._probing(pl_module, self.train_mode) as batchnorms:
            g = self._choose_method(pl_module, batch, resolved, batch_size, per_sample)
            scan: LayerScan | None = None
            if g.method == "gradient":
                assert g.out is not None
                rel = relative(dependency_by_gradient(g.out, g.inputs, probes), axis=1)
                leaks = off_diagonal(rel, self.max_dependency)
                if leaks:
                    scan = first_mixing_output(g.recorder.outputs, g.inputs[0], leaks[0].out, self.max_dependency)
                backwards = len(probes) + (scan.backwards if scan else 0)
                cost = cost_in_steps(g.forwards, backwards, batch_size, batch_size)
            else:
                rel = relative(dependency_by_perturbation(forward, x, probes), axis=0)
                leaks = off_diagonal(rel, self.max_dependency)
                cost = cost_in_steps(g.forwards + 1 + len(probes), 0, batch_size, batch_size)
        names = g.recorder.names
        kinds = [g.recorder.kind(k) for k in range(len(names))]
        return _Measurement(rel, probes, g.method, leaks, cost, g.where, scan, names, kinds, batchnorms)

    # ----------------------------------------------------------------- reporting
    @override
    def _failed(self, measured: _Measurement) -> bool:
        return bool(measured.leaks)

    @override
    def _report(self, trainer: pl.Trainer, m: _Measurement) -> None:
        values = {
            "max_leak": largest(m.leaks),
            "leaking_pairs": float(len(m.leaks)),
            "num_probes": float(len(m.probes)),
            "cost_steps": m.cost,
        }
        self.log_figure(
            trainer, "dependency_matrix", dependency_picture, m.rel, m.leaks, flagged_label="leak across samples",
            ylabel="probed output sample",
            title=f"BatchIndependenceCheck: only each sample's own input may be bright ({len(m.leaks)} leak(s))",
        )
        setup = self._setup(m.method, m.where, m.batchnorms)
        if m.leaks:
            where = self._where_mixing(m)
            if m.scan is not None:
                self.log_text(trainer, "layer_scan", self._scan_table(m))
            self.report(
                trainer,
                "fail",
                f"samples of the batch mix: {_describe(m.leaks)} (largest {values['max_leak']:.3g} relative to the "
                f"own-sample dependency; {setup}). {where}",
                values,
                "samples must meet only in the loss: look for a view/reshape/transpose that moves the batch dim "
                "(use permute/transpose, not view, to reorder dims), or statistics over dim 0 in forward "
                "(use nn.BatchNorm/LayerNorm, not a hand-written x - x.mean(0)).",
            )
            return
        measured = torch.nan_to_num(m.rel, nan=0.0)
        if not bool((measured > 0).any()):
            self.report(
                trainer,
                "warn",
                f"the probed outputs do not depend on any input ({setup}), so mixing cannot be judged",
                values,
                "check that forward uses its input (InputIndependentBaseline looks at this).",
            )
            return
        summary = (
            f"the outputs of samples {m.probes} depend only on their own inputs "
            f"(largest cross-sample dependency {values['max_leak']:.3g}; {setup})"
        )
        self.report(trainer, "pass", summary, values)

    def _where_mixing(self, m: _Measurement) -> str:
        scan = m.scan
        if scan is None:
            return "(The first mixing layer is located with gradients only; they were not available here.)"
        if scan.first_mixed is None:
            last = f" after `{m.names[scan.last_clean]}`" if scan.last_clean is not None else ""
            return f"No module output shows it: the mixing happens in forward code{last}, outside any submodule."
        first = m.names[scan.first_mixed]
        text = f"Mixing first appears at the output of `{first}` ({m.kinds[scan.first_mixed]})"
        if scan.last_clean is not None:
            clean = m.names[scan.last_clean]
            text += f"; the output of `{clean}` ({m.kinds[scan.last_clean]}) before it is clean"
            return text + f": look at `{first}` and the forward code between `{clean}` and `{first}`."
        return text + "; it is the first module output that depends on the input."

    def _scan_table(self, m: _Measurement) -> str:
        assert m.scan is not None
        rows = ["| # | module output | kind | leak |", "|---|---|---|---|"]
        for k, leak in enumerate(m.scan.leaks):
            shown = "not judged" if math.isnan(leak) else f"{leak:.3g}"
            rows.append(f"| {k} | `{m.names[k]}` | {m.kinds[k]} | {shown} |")
        return "\n".join(rows)


def _describe(leaks: list[Dependency], shown: int = 4) -> str:
    """``"output of sample 0 depends on samples 1, 2, 3; ..."`` for at most ``shown`` outputs."""
    by_out: dict[int, list[int]] = {}
    for dep in leaks:
        by_out.setdefault(dep.out, []).append(dep.source)
    parts = []
    for out, sources in list(by_out.items())[:shown]:
        listed = ", ".join(map(str, sources[:6])) + (f" (+{len(sources) - 6} more)" if len(sources) > 6 else "")
        parts.append(f"output of sample {out} depends on sample(s) {listed}")
    more = f"; and {len(by_out) - shown} more outputs" if len(by_out) > shown else ""
    return "; ".join(parts) + more
