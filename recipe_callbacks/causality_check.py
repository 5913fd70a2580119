"""CausalityCheck: recipe step 2l for autoregressive models, the output at time t must not see the future."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from typing_extensions import override

from recipe_callbacks.core.dependencies import (
    Dependency,
    cost_in_steps,
    dependency_by_gradient,
    dependency_by_perturbation,
    dependency_picture,
    future,
    largest,
    probe_indices,
    relative,
    relative_to_joint_peak,
)
from recipe_callbacks.core.short_training import take_samples
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.plumbing.batch import BatchToXY, ForwardFn, ResolvedBatch, resolve_batch
from recipe_callbacks.plumbing.dependency_check import METHODS, GradientInputs, Method, OneOffDependencyCheck
from recipe_callbacks.plumbing.finding import OnFail
from recipe_callbacks.plumbing.validation import check_bool, check_choice, check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl


# Modules that only a sequence model has: their presence is the evidence that dim 1 of a float
# (B, T, F) input is time. Hand-written blocks count by name (nanoGPT's CausalSelfAttention,
# Hugging Face's GPT2Attention, a user's LSTMBlock, ...).
SEQUENCE_MODULES: tuple[type[nn.Module], ...] = (
    nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer
)
SEQUENCE_NAME_PARTS: tuple[str, ...] = ("attention", "attn", "lstm", "gru", "rnn", "mamba", "causal")


def sequence_module(model: nn.Module) -> str | None:
    """The name of the first module that only a sequence model has, or ``None``.

    Example:
        >>> sequence_module(nn.Sequential(nn.Linear(2, 4), nn.LSTM(4, 4)))
        '1 (LSTM)'
        >>> sequence_module(nn.Sequential(nn.Linear(2, 4), nn.ReLU())) is None
        True
    """
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, SEQUENCE_MODULES) or any(part in kind.lower() for part in SEQUENCE_NAME_PARTS):
            return f"{name or 'the model'} ({kind})"
    return None


@dataclass
class _Measurement:
    rel: torch.Tensor  # (T, T) relative dependency of output time (rows) on input time (columns)
    positions: list[int]
    method: str
    where: str
    violations: list[Dependency]
    cost: float
    batchnorms: int


class CausalityCheck(OneOffDependencyCheck):
    """Checks that a sequence model's output at time ``t`` depends on no input after ``t``.

    On the first training batch of the fit, for sequence inputs ``(B, T, ...)`` of features or
    ``(B, T)`` of token ids and outputs with the same time dim: for a few probed output times
    ``t``, the gradient of a fixed random weighting of the outputs at ``t`` with respect to the
    input is charted over input time, giving a time x time dependency matrix. Any dependency on
    the future (input time ``s > t``, or ``s >= t`` with ``strict``) above ``max_dependency`` relative
    to the probe's strongest dependency is a failure: a causal attention mask off by one, a
    bidirectional RNN, a convolution padded on both sides, a shift the wrong way.

    Token ids are differentiated at the output of the ``nn.Embedding`` that embeds them; where
    there are no input gradients (ids that reach no embedding, a non-differentiable model) a few
    input times are perturbed instead and the outputs watched (one forward pass each). The model
    runs as in training with BatchNorm in eval (or all in eval with ``train_mode=False``), under
    an isolated RNG, on ``num_samples`` sequences of the batch; parameter ``.grad``, modes and
    buffers are left as they were. Non-sequence inputs are skipped (name ``time_dim`` to force
    the check). Does not run on a resumed run.

    Args:
        num_positions: how many output times (gradient) or input times (perturbation) to probe,
            spread over the sequence; each costs one backward (or forward) pass.
        num_samples: how many sequences of the batch to run the check on.
        max_dependency: largest dependency on the future allowed, relative to the probe's strongest
            dependency; a causal model has exactly zero.
        strict: ``False``: output ``t`` may use inputs up to and including ``t`` (a language model
            fed tokens ``<= t``); ``True``: only inputs before ``t``.
        time_dim: the time dim of the input and the output (the same for both). ``None`` infers
            dim 1 for ``(B, T)`` integer ids, and for ``(B, T, F)`` float features when the model
            has a recurrent or attention module (``nn.RNNBase``, ``nn.MultiheadAttention``, a
            module whose class name says attention/LSTM/GRU/RNN); it skips every other input, since
            a tabular or set model mixes the rows of a ``(B, 5, 2)`` input by design.
        train_mode: run the model in its training mode with only BatchNorm in eval (``True``) or the
            whole model in eval mode (``False``).
        method: ``"gradient"``, ``"perturbation"`` or ``"auto"`` (gradients when available).
        on_fail: ``"warn"``, ``"raise"`` or ``"ignore"`` (see :class:`RecipeCallback`).
        input_key: where the input is in a batch; inferred when ``None``.
        target_key: where the target is in a batch; inferred when ``None``.
        batch_to_xy: a function ``batch -> (x, y)`` for other batch shapes.
        forward_fn: how to run the model the way your step does (a method name or a function
            ``(pl_module, batch) -> output``); see :class:`~recipe_callbacks.RecipeCallback`.

    Raises:
        ValueError: for non-positive counts or max_dependency, ``time_dim`` 0, or an unknown ``method``.
        TypeError: for arguments of the wrong type.

    Logged:
        - ``recipe.causality_check/finding``: text, the Finding with its values
          ``max_future_dependency`` (the largest relative dependency on the future),
          ``future_pairs`` ((output time, input time) pairs flagged), ``max_lookahead`` (how far
          ahead the farthest flagged input is, ``s - t``), ``num_positions`` (times probed) and
          ``cost_steps`` (cost in training-step equivalents).
        - ``recipe.causality_check/dependency_matrix``: figure, the probed output times (rows) x
          input times (columns), log colour scale with a colour bar; the upper-right triangle must
          be dark; a dependency on the future is outlined in red.

    Example::

        trainer = Trainer(callbacks=[CausalityCheck(num_positions=8)])
    """

    sharded_reason: ClassVar[str] = (
        "it runs its own forward and backward passes outside the training step, which a sharded model "
        "only takes inside the strategy's collectives"
    )

    def __init__(
        self,
        num_positions: int = 8,
        num_samples: int = 2,
        max_dependency: float = 1e-4,
        strict: bool = False,
        time_dim: int | None = None,
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
        self.num_positions = check_int(owner, "num_positions", num_positions)
        self.num_samples = check_int(owner, "num_samples", num_samples)
        self.max_dependency = check_float(owner, "max_dependency", max_dependency, maximum=1.0)
        for name, flag in (("strict", strict), ("train_mode", train_mode)):
            check_bool(owner, name, flag)
        self.strict = strict
        self.train_mode = train_mode
        self.time_dim = None if time_dim is None else check_int(owner, "time_dim", time_dim, minimum=1)
        self.method: Method = check_choice(owner, "method", method, METHODS)

    # ----------------------------------------------------------------- measuring
    def _time_dim(self, x: torch.Tensor, integer: bool, model: nn.Module) -> int:
        if self.time_dim is not None:
            if self.time_dim >= x.ndim:
                raise CheckSkipped(f"time_dim={self.time_dim} but the input has shape {tuple(x.shape)}", "time_dim")
            return self.time_dim
        if integer and x.ndim == 2:
            return 1
        if not integer and x.ndim == 3:
            if sequence_module(model) is not None:
                return 1
            raise CheckSkipped(
                f"the input of shape {tuple(x.shape)} (float features) may not be a sequence: the model has no "
                "recurrent or attention module that would make dim 1 time, and a model that mixes the rows of a "
                "non-sequence input by design would fail; name the time dim to check it",
                "time_dim",
            )
        kind = "integer ids" if integer else "float features"
        raise CheckSkipped(
            f"the input of shape {tuple(x.shape)} ({kind}) is not a sequence: expected (B, T) token ids or "
            "(B, T, F) features; name the time dim to check it anyway",
            "time_dim",
        )

    @override
    def _measure(self, pl_module: pl.LightningModule, batch: Any, resolved: ResolvedBatch) -> _Measurement:
        x = resolved.x
        integer = not (x.is_floating_point() or x.is_complex())
        dim = self._time_dim(x, integer, pl_module)
        steps = x.shape[dim]
        if steps < 2:
            raise CheckSkipped(f"the sequence has {steps} time step(s); nothing to compare", "time_dim")
        batch_size = x.shape[0]
        n = min(self.num_samples, batch_size)
        small = take_samples(batch, n, batch_size)
        small_resolved = resolve_batch(small, self.input_key, self.target_key, self.batch_to_xy)
        xs = small_resolved.x
        positions = probe_indices(steps, self.num_positions)

        def timed(out: torch.Tensor) -> torch.Tensor:
            if out.ndim > dim and out.shape[0] == n and out.shape[dim] == steps:
                return out
            if dim == 1 and out.ndim >= 1 and out.shape[0] == n * steps:  # logits flattened to (B * T, V)
                return out.reshape(n, steps, *out.shape[1:])
            last = out.ndim > dim and out.shape[0] == n and out.shape[dim] == 1
            raise CheckSkipped(
                f"the output of shape {tuple(out.shape)} has no time dim {dim} of length {steps} like the input "
                f"{tuple(xs.shape)}: "
                + ("it holds the last position only; run the model the way training does (all positions)"
                   if last else "not a sequence-to-sequence model"),
                "forward_fn" if last else "time_dim",
            )

        def forward(inp: torch.Tensor) -> torch.Tensor:
            return timed(self._model_output(pl_module, small, small_resolved, inp))

        with self._probing(pl_module, self.train_mode) as batchnorms:
            g = self._choose_method(pl_module, small, small_resolved, n, timed,
                                    keep=lambda t: t.ndim > dim and t.shape[dim] == steps)
            carrier = ""
            if g.method == "gradient":
                rel, violations, carrier = self._by_gradient(g, positions, dim)
                answers = any(g.target_like)
                cost = cost_in_steps(g.forwards, len(positions) * (2 if answers else 1), n, batch_size)
            else:
                raw = dependency_by_perturbation(forward, xs, positions, out_dim=dim, in_dim=dim)
                rel = relative(raw, axis=0)
                violations = future(rel, self.max_dependency, self.strict)
                cost = cost_in_steps(g.forwards + 1 + len(positions), 0, n, batch_size)
        return _Measurement(rel, positions, g.method, g.where + carrier, violations, cost, batchnorms)

    def _by_gradient(
        self, g: GradientInputs, positions: list[int], dim: int
    ) -> tuple[torch.Tensor, list[Dependency], str]:
        """The relative time x time matrix, its dependencies on the future, and what the summary adds
        about an input equal to the target (a decoder fed the answer)."""
        assert g.out is not None
        plain = [t for t, c in zip(g.inputs, g.target_like, strict=True) if not c]
        answers = [t for t, c in zip(g.inputs, g.target_like, strict=True) if c]
        raw = dependency_by_gradient(g.out, plain or g.inputs, positions, out_dim=dim, in_dim=dim)
        rel = relative(raw, axis=1)
        violations = future(rel, self.max_dependency, self.strict)
        carrier = ""
        if answers and self.forward_fn is not None:
            # an input that is the target itself (teacher forcing without the shift): the output at t
            # must not depend on it at t either, since target t is the input at t + 1
            carried = dependency_by_gradient(g.out, answers, positions, out_dim=dim, in_dim=dim)
            rel_carried = relative_to_joint_peak(carried, raw)
            found_carried = future(rel_carried, self.max_dependency, strict=True)
            if found_carried:
                rel, violations = rel_carried, found_carried
                carrier = " (an input equal to the target: the decoder is fed the answer)"
        if answers and self.forward_fn is None and plain:
            carrier = (" (an input equal to the target was left out: whether your step shifts it is not "
                       "known; set forward_fn to run the model as your step does)")
        return rel, violations, carrier

    # ----------------------------------------------------------------- reporting
    @override
    def _failed(self, measured: _Measurement) -> bool:
        return bool(measured.violations)

    @override
    def _report(self, trainer: pl.Trainer, m: _Measurement) -> None:
        lookahead = max((d.source - d.out for d in m.violations), default=0)
        values = {
            "max_future_dependency": largest(m.violations),
            "future_pairs": float(len(m.violations)),
            "max_lookahead": float(lookahead),
            "num_positions": float(len(m.positions)),
            "cost_steps": m.cost,
        }
        self.log_figure(
            trainer, "dependency_matrix", dependency_picture, m.rel, m.violations, xlabel="input time step",
            ylabel="output time step",
            flagged_label="dependency on the future",
            title=f"CausalityCheck: nothing may be bright above the diagonal, the future ({len(m.violations)} found)",
        )
        allowed = "before t" if self.strict else "up to t"
        setup = self._setup(m.method, m.where, m.batchnorms)
        if m.violations:
            shown = "; ".join(f"output at t={d.out} depends on input at t={d.source}" for d in m.violations[:4])
            more = f" (+{len(m.violations) - 4} more)" if len(m.violations) > 4 else ""
            self.report(
                trainer,
                "fail",
                f"the output sees the future: {shown}{more}; up to {lookahead} step(s) ahead, largest "
                f"{values['max_future_dependency']:.3g} relative to the strongest dependency ({setup}); the output "
                f"at t may only depend on inputs {allowed}.",
                values,
                "check the causal attention mask (torch.triu(ones(T, T), diagonal=1) marks the future to hide; "
                "diagonal=2 lets t see t+1), bidirectional RNNs, convolutions padded on both sides, and shifts of "
                "the input or target; see the dependency_matrix picture (red: the future). A model that is not "
                "meant to be autoregressive (a bidirectional encoder or tagger) needs no CausalityCheck.",
            )
            return
        if not bool((torch.nan_to_num(m.rel, nan=0.0) > 0).any()):
            self.report(
                trainer,
                "warn",
                f"the probed outputs do not depend on any input time ({setup}), so causality cannot be judged",
                values,
                "check that forward uses its input (InputIndependentBaseline looks at this).",
            )
            return
        summary = (
            f"the output at each probed time depends only on inputs {allowed} "
            f"({len(m.positions)} times probed of {m.rel.shape[1]}; {setup})"
        )
        self.report(trainer, "pass", summary, values)
