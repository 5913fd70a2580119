"""Comparing two runs as the recipe asks: "same seed, same result" (2a) and "one change at a time" (3b).

Pure functions on what ``recipe_report.json`` holds (the Findings and the ``"run"`` section that
``RecipeReport`` writes): the first step where two training-loss curves differ, the explanation of
a difference from what the runs recorded (seed, fingerprints, deterministic algorithms), the
Findings whose status changed, the full-set validation figures of both runs with their intervals,
and the hyperparameters that differ. Nothing here imports Lightning or torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Metrics of FullEvalSet where a larger value is better; every other figure (loss, mae, mse) is
# better when smaller.
HIGHER_IS_BETTER = frozenset({"accuracy", "f1", "auroc", "r2", "precision", "recall", "top5_accuracy"})


def same_float(a: float, b: float) -> bool:
    """Bit-for-bit equality of two floats as JSON holds them (NaN equals NaN).

    Example:
        >>> same_float(0.1, 0.1), same_float(math.nan, math.nan)
        (True, True)
        >>> same_float(0.1, 0.10000000000000002)
        False
    """
    if math.isnan(a) and math.isnan(b):
        return True
    return a == b


@dataclass(frozen=True)
class Divergence:
    """Where two training-loss curves first differ.

    ``first_step`` is the global step of the first batch whose losses differ (``None`` when the
    compared batches agree bit for bit); ``identical`` also needs both curves to have the same length.
    """

    compared: int
    length_a: int
    length_b: int
    identical: bool
    first_index: int | None = None
    first_step: int | None = None
    value_a: float | None = None
    value_b: float | None = None
    abs_diff: float | None = None
    rel_diff: float | None = None
    max_abs_diff: float = 0.0

    def short(self) -> str:
        """A few words: ``identical``, or the first diverging step and by how much."""
        if self.first_index is None:
            return "identical" if self.identical else self.text()
        return f"diverge at step {self.first_step}, by {self.abs_diff:.2g}"

    def text(self) -> str:
        """One phrase for a table cell."""
        if self.compared == 0:
            return "no training losses recorded"
        if self.first_index is None:
            if self.identical:
                return f"identical bit for bit over {self.compared} batches"
            return (
                f"the first {self.compared} batches identical bit for bit; lengths differ "
                f"({self.length_a} vs {self.length_b} batches)"
            )
        rel = "" if self.rel_diff is None else f", relative {self.rel_diff:.2g}"
        return (
            f"diverge at step {self.first_step} (batch {self.first_index}): {self.value_a!r} vs {self.value_b!r}, "
            f"|difference| {self.abs_diff:.3g}{rel}; largest |difference| {self.max_abs_diff:.3g}"
        )


def first_divergence(
    steps_a: Sequence[int], losses_a: Sequence[float], steps_b: Sequence[int], losses_b: Sequence[float]
) -> Divergence:
    """Compare two loss curves batch by batch, bit for bit.

    Example:
        >>> d = first_divergence([0, 1, 2], [2.0, 1.5, 1.0], [0, 1, 2], [2.0, 1.5, 1.25])
        >>> d.identical, d.first_step, d.abs_diff
        (False, 2, 0.25)
        >>> first_divergence([0, 1], [2.0, 1.0], [0, 1], [2.0, 1.0]).identical
        True
    """
    n = min(len(losses_a), len(losses_b))
    first: int | None = None
    largest = 0.0
    for i in range(n):
        a, b = float(losses_a[i]), float(losses_b[i])
        if same_float(a, b):
            continue
        if first is None:
            first = i
        diff = abs(a - b)
        largest = max(largest, diff) if math.isfinite(diff) else math.inf
    identical = first is None and len(losses_a) == len(losses_b)
    if first is None:
        return Divergence(n, len(losses_a), len(losses_b), identical)
    a, b = float(losses_a[first]), float(losses_b[first])
    diff = abs(a - b)
    rel = diff / abs(a) if a != 0 and math.isfinite(diff) else None
    step = int(steps_a[first]) if first < len(steps_a) else first
    return Divergence(n, len(losses_a), len(losses_b), False, first, step, a, b, diff, rel, largest)


@dataclass(frozen=True)
class Figure:
    """One full-set validation figure of one run with its interval (``FullEvalSet``'s Finding)."""

    loader: str
    name: str
    value: float
    half_width: float | None

    @property
    def low(self) -> float:
        return self.value - (self.half_width or 0.0)

    @property
    def high(self) -> float:
        return self.value + (self.half_width or 0.0)

    def text(self) -> str:
        if self.half_width is None or not math.isfinite(self.half_width):
            return f"{self.value:.4g}"
        return f"{self.value:.4g} ± {self.half_width:.2g}"


@dataclass(frozen=True)
class FigureComparison:
    loader: str
    name: str
    a: Figure
    b: Figure
    higher_is_better: bool
    overlap: bool
    verdict: str  # "better", "worse", "no evidence", "equal"

    def text(self) -> str:
        if self.verdict == "equal":
            return "equal"
        if self.verdict == "no evidence":
            return "intervals overlap: no evidence of a change"
        return f"{self.verdict}, beyond the noise (intervals apart)"


def compare_figure(a: Figure, b: Figure) -> FigureComparison:
    """Is ``b`` better than ``a`` beyond the noise? Overlapping intervals are no evidence.

    Example:
        >>> c = compare_figure(Figure("val", "accuracy", 0.80, 0.02), Figure("val", "accuracy", 0.90, 0.02))
        >>> c.verdict, c.overlap
        ('better', False)
        >>> compare_figure(Figure("val", "loss", 0.50, 0.1), Figure("val", "loss", 0.45, 0.1)).verdict
        'no evidence'
    """
    higher = a.name.split("/")[-1] in HIGHER_IS_BETTER
    overlap = max(a.low, b.low) <= min(a.high, b.high)
    if same_float(a.value, b.value):
        verdict = "equal"
    elif overlap:
        verdict = "no evidence"
    else:
        improved = b.value > a.value if higher else b.value < a.value
        verdict = "better" if improved else "worse"
    return FigureComparison(a.loader, a.name, a, b, higher, overlap, verdict)


def eval_figures(findings: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Figure]:
    """``{(loader, metric): Figure}`` from the ``FullEvalSet`` Findings of a report.

    The loader is the first word of the Finding's summary (``"val"``, ``"dataloader_1"``, ``"test"``);
    a metric is every value that has a ``<name>_halfwidth`` beside it, and ``loss``.
    """
    out: dict[tuple[str, str], Figure] = {}
    for f in findings:
        if f.get("check") != "FullEvalSet" or f.get("status") == "skip":
            continue
        values = {k: v for k, v in dict(f.get("values", {})).items() if v is not None}
        words = str(f.get("summary", "")).split()
        loader = words[0] if words else "val"
        for name, value in values.items():
            if name.endswith(("_halfwidth", "_stderr")) or f"{name}_halfwidth" not in values:
                continue
            out[(loader, name)] = Figure(loader, name, float(value), float(values[f"{name}_halfwidth"]))
    return out


@dataclass(frozen=True)
class StatusChange:
    check: str
    index: int
    status_a: str
    status_b: str
    summary_b: str


def _common_words(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split(), b.split(), strict=False):
        if x != y:
            break
        n += 1
    return n


def _pairs(fa: Sequence[Mapping[str, Any]], fb: Sequence[Mapping[str, Any]]) -> list[tuple[int | None, int | None]]:
    """Pair the Findings of one check in two runs: first those whose summaries begin with the same
    words (a check may report several things, not always in the same order), then the rest in order."""
    pairs: list[tuple[int | None, int | None]] = []
    free_a = list(range(len(fa)))
    left_b: list[int] = []
    for j, f in enumerate(fb):
        scores = [(_common_words(str(fa[i].get("summary", "")), str(f.get("summary", ""))), i) for i in free_a]
        best = max(scores, default=(0, -1))
        if best[0] >= 2:
            pairs.append((best[1], j))
            free_a.remove(best[1])
        else:
            left_b.append(j)
    for k in range(max(len(free_a), len(left_b))):
        pairs.append((free_a[k] if k < len(free_a) else None, left_b[k] if k < len(left_b) else None))
    return pairs


def status_changes(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> list[StatusChange]:
    """The Findings whose status differs, paired by check (and within a check by how their summaries
    begin, else by order); a Finding present in one run only is a change from or to ``"absent"``.

    Example:
        >>> a = [{"check": "X", "status": "pass", "summary": "the LR followed the plan"}]
        >>> b = [{"check": "X", "status": "warn", "summary": "Adam runs at lr=0.03"},
        ...      {"check": "X", "status": "pass", "summary": "the LR followed the plan"}]
        >>> [(c.check, c.status_a, c.status_b) for c in status_changes(a, b)]
        [('X', 'absent', 'warn')]
    """

    def grouped(findings: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
        out: dict[str, list[Mapping[str, Any]]] = {}
        for f in findings:
            out.setdefault(str(f.get("check")), []).append(f)
        return out

    ga, gb = grouped(a), grouped(b)
    changes: list[StatusChange] = []
    for check in list(ga) + [c for c in gb if c not in ga]:
        fa, fb = ga.get(check, []), gb.get(check, [])
        for n, (i, j) in enumerate(_pairs(fa, fb)):
            sa = str(fa[i]["status"]) if i is not None else "absent"
            sb = str(fb[j]["status"]) if j is not None else "absent"
            if sa != sb:
                summary = str(fb[j].get("summary", "")) if j is not None else str(fa[i or 0].get("summary", ""))
                changes.append(StatusChange(check, n, sa, sb, summary))
    return changes


def differing(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (value_a, value_b)}`` for every key whose value differs (absent is ``None``).

    Example:
        >>> differing({"lr": 0.1, "width": 8}, {"lr": 0.3, "width": 8})
        {'lr': (0.1, 0.3)}
    """
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if va != vb:
            out[key] = (va, vb)
    return out


def explain(
    run_a: Mapping[str, Any],
    run_b: Mapping[str, Any],
    divergence: Divergence,
    changed: Mapping[str, tuple[Any, Any]],
    versions: Mapping[str, tuple[Any, Any]],
) -> list[str]:
    """Why two runs differ, from what they recorded (their ``"run"`` sections), most likely first.

    Example:
        >>> run = {"seed": 0, "fingerprints": {"weights": "a", "batch": "b"}, "deterministic": True}
        >>> explain(run, {**run, "seed": 1}, first_divergence([0], [1.0], [0], [2.0]), {}, {})[0][:30]
        'seed: the runs were seeded dif'
    """
    reasons: list[str] = []
    fa, fb = dict(run_a.get("fingerprints") or {}), dict(run_b.get("fingerprints") or {})
    seed_a, seed_b = run_a.get("seed"), run_b.get("seed")
    if seed_a != seed_b:
        reasons.append(f"seed: the runs were seeded differently ({seed_a} vs {seed_b})")
    elif fa.get("weights") and fb.get("weights") and fa["weights"] != fb["weights"]:
        reasons.append(
            "weights: same seed but different initial weights: the model was not built from the seeded "
            "generator (built before SeedEverything, random numbers drawn in between) or the model code changed"
        )
    if fa.get("weights") == fb.get("weights") and fa.get("batch") and fb.get("batch") and fa["batch"] != fb["batch"]:
        reasons.append(
            "data order: same initial weights but a different first batch: the data order or augmentation is "
            "not seeded (a sampler or worker_init_fn with its own generator, files listed in another order)"
        )
    if changed:
        keys = ", ".join(list(changed)[:6]) + (" ..." if len(changed) > 6 else "")
        reasons.append(f"hyperparameters: {len(changed)} differ ({keys})")
    if not divergence.identical and divergence.first_index is not None and not reasons:
        off = [name for name, run in (("A", run_a), ("B", run_b)) if not run.get("deterministic")]
        if off:
            reasons.append(
                "nondeterministic kernels: same seed, weights and first batch, but deterministic algorithms "
                f"were off in run {' and '.join(off)}; set Trainer(deterministic=True) or "
                "SeedEverything(deterministic=True)"
            )
        else:
            reasons.append(
                "not recorded: same seed, weights and first batch with deterministic algorithms on; look at what "
                "the runs do not record: data after the first batch (shuffling in workers), code changes, hardware"
            )
    if versions:
        reasons.append("versions: " + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in versions.items()))
    return reasons


@dataclass
class Comparison:
    """Everything ``recipe-callbacks compare`` says about run B against run A."""

    run_a: str
    run_b: str
    seeds: tuple[Any, Any]
    fingerprints_a: dict[str, str]
    fingerprints_b: dict[str, str]
    fingerprints_equal: bool | None
    deterministic: tuple[Any, Any]
    divergence: Divergence
    reasons: list[str]
    changes: list[StatusChange] = field(default_factory=list)
    figures: list[FigureComparison] = field(default_factory=list)
    hparams: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    versions: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        """Same fingerprints and training losses equal bit for bit."""
        return bool(self.fingerprints_equal) and self.divergence.identical and self.divergence.compared > 0

    def main_figure(self, metric: str | None = None) -> FigureComparison | None:
        """The figure ``--expect better`` judges: ``metric`` if given, else the first loader's accuracy
        (or the first metric with a larger-is-better sense), else its loss."""
        if not self.figures:
            return None
        if metric is not None:
            return next((f for f in self.figures if f.name == metric), None)
        first_loader = self.figures[0].loader
        mine = [f for f in self.figures if f.loader == first_loader]
        return next((f for f in mine if f.higher_is_better), next((f for f in mine if f.name == "loss"), mine[0]))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["identical"] = self.identical
        out["divergence"]["text"] = self.divergence.text()
        out["hparams"] = {k: list(v) for k, v in self.hparams.items()}
        out["versions"] = {k: list(v) for k, v in self.versions.items()}
        for fig, data in zip(self.figures, out["figures"], strict=True):
            data["text"] = fig.text()
        return out


def compare_runs(
    label_a: str,
    report_a: Mapping[str, Any],
    label_b: str,
    report_b: Mapping[str, Any],
    losses: tuple[tuple[Sequence[int], Sequence[float]], tuple[Sequence[int], Sequence[float]]] | None = None,
) -> Comparison:
    """Compare two loaded ``recipe_report.json`` payloads (``{"findings", "versions", "run"}``).

    ``losses`` overrides the training-loss curves of the ``"run"`` sections (``((steps_a, values_a),
    (steps_b, values_b))``), e.g. with a scalar read from the logger's files.
    """
    run_a, run_b = dict(report_a.get("run") or {}), dict(report_b.get("run") or {})
    if losses is None:
        la, lb = dict(run_a.get("train_loss") or {}), dict(run_b.get("train_loss") or {})
        losses = ((la.get("steps", []), la.get("values", [])), (lb.get("steps", []), lb.get("values", [])))
    values_a = [math.nan if v is None else float(v) for v in losses[0][1]]
    values_b = [math.nan if v is None else float(v) for v in losses[1][1]]
    divergence = first_divergence(list(losses[0][0]), values_a, list(losses[1][0]), values_b)
    fa, fb = dict(run_a.get("fingerprints") or {}), dict(run_b.get("fingerprints") or {})
    equal: bool | None = None
    if fa and fb:
        equal = fa == fb
    settings_a = {**dict(run_a.get("hparams") or {}), **dict(run_a.get("settings") or {})}
    settings_b = {**dict(run_b.get("hparams") or {}), **dict(run_b.get("settings") or {})}
    hparams = differing(settings_a, settings_b)
    versions = differing(dict(report_a.get("versions") or {}), dict(report_b.get("versions") or {}))
    reasons = explain(run_a, run_b, divergence, hparams, versions)
    figs_a, figs_b = eval_figures(report_a.get("findings", [])), eval_figures(report_b.get("findings", []))
    figures = [compare_figure(figs_a[key], figs_b[key]) for key in figs_a if key in figs_b]
    return Comparison(
        label_a,
        label_b,
        (run_a.get("seed"), run_b.get("seed")),
        fa,
        fb,
        equal,
        (run_a.get("deterministic"), run_b.get("deterministic")),
        divergence,
        reasons,
        status_changes(report_a.get("findings", []), report_b.get("findings", [])),
        figures,
        hparams,
        versions,
    )
