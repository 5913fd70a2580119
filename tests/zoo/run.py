"""Train every zoo family under the ``full`` and ``skeleton`` presets at their defaults and print
family x check x verdict; then every planted bug under the presets that hold its check.

    python -m tests.zoo.run                      # everything (``make zoo``)
    python -m tests.zoo.run --family hf_gpt2     # one family (repeatable)
    python -m tests.zoo.run --markdown           # the tables as Markdown (the README's)
    python -m tests.zoo.run --details            # also the summary of every warn, fail and skip

Exit code 0 when no healthy model got a warn or fail, nothing crashed and every planted bug was caught.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field

import torch

STATUS_ORDER = {"fail": 4, "warn": 3, "pass": 2, "skip": 1}
SHORT = {"fail": "FAIL", "warn": "WARN", "pass": "pass", "skip": "skip", None: "-", "crash": "CRASH"}
PRESETS = ("full", "skeleton")


@dataclass
class Outcome:
    family: str
    bug: str | None
    preset: str
    verdicts: dict[str, str] = field(default_factory=dict)  # check -> worst status
    summaries: dict[str, list[str]] = field(default_factory=dict)  # check -> "status: summary" lines
    crash: str = ""
    seconds: float = 0.0
    cost_steps: float = 0.0  # the one-off checks' stated cost, in training-step equivalents


def run_case(family: str, bug: str | None, preset: str, *, max_epochs: int | None = None) -> Outcome:
    """One fit of ``family`` (healthy when ``bug`` is None) with the preset's callbacks at their defaults."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from recipe_callbacks import RecipeWarning, presets
    from recipe_callbacks.plumbing.callback_base import RecipeCallback
    from tests.zoo.families import build

    outcome = Outcome(family, bug, preset)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeWarning)
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        kwargs = presets.trainer_kwargs(preset)  # SeedEverything seeds here, before the model is built
        kwargs["callbacks"] = [*kwargs.get("callbacks", [])]
        for cb in kwargs["callbacks"]:
            if type(cb).__name__ == "RecipeReport":
                cb.print_report = False
        case = build(family, bug)
        train, val = case.loaders()
        trainer = pl.Trainer(
            **kwargs, accelerator="cpu", devices=1, max_epochs=max_epochs or case.max_epochs,
            logger=TensorBoardLogger(root, name="", version="run"), default_root_dir=root,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
            **case.trainer_kwargs,
        )
        try:
            trainer.fit(case.module, train, val)
        except Exception as err:  # a crash of the user's fit is the worst outcome: record it
            outcome.crash = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=-4)}"
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if not isinstance(cb, RecipeCallback) or type(cb).__name__ == "RecipeReport":
                continue
            name = type(cb).__name__
            worst = None
            for f in cb.findings:
                outcome.cost_steps += sum(v for k, v in f.values.items() if k.endswith("cost_steps") and v == v)
                outcome.summaries.setdefault(name, []).append(f"{f.status}: {f.summary} {f.advice}".strip())
                if worst is None or STATUS_ORDER[f.status] > STATUS_ORDER[worst]:
                    worst = f.status
            outcome.verdicts[name] = worst or "pending"
    outcome.seconds = time.perf_counter() - start
    return outcome


def alarms(outcome: Outcome) -> list[str]:
    """The checks that raised a warn or fail (a false alarm on a healthy model)."""
    return [c for c, s in outcome.verdicts.items() if s in ("warn", "fail")]


def caught(outcome: Outcome) -> bool:
    from tests.zoo.families import PLANTED

    assert outcome.bug is not None
    check, statuses = PLANTED[(outcome.family, outcome.bug)]
    return outcome.verdicts.get(check) in statuses


def _check_order(outcomes: list[Outcome]) -> list[str]:
    from recipe_callbacks.presets import _MEMBERS

    order = [name for name, _ in _MEMBERS["full"]]
    seen = {c for o in outcomes for c in o.verdicts}
    return [c for c in order if c in seen] + sorted(seen - set(order))


def healthy_table(outcomes: list[Outcome], markdown: bool) -> str:
    families = list(dict.fromkeys(o.family for o in outcomes))
    checks = _check_order(outcomes)
    by = {(o.family, o.preset): o for o in outcomes}
    header = ["check", *families]
    rows = []
    for check in [*checks, "(crash)", "(cost_steps)"]:
        row = [check]
        for fam in families:
            cells = []
            for preset in PRESETS:
                o = by.get((fam, preset))
                if o is None:
                    continue
                if check == "(crash)":
                    cells.append("CRASH" if o.crash else "none")
                elif check == "(cost_steps)":
                    cells.append(f"{o.cost_steps:.0f}")
                else:
                    cells.append(SHORT.get(o.verdicts.get(check), o.verdicts.get(check, "-")))
            row.append("/".join(cells))
        rows.append(row)
    return _format(header, rows, markdown)


def planted_table(outcomes: list[Outcome], markdown: bool) -> str:
    from tests.zoo.families import PLANTED

    header = ["family", "planted bug", "check", "verdicts (preset)", "caught"]
    rows = []
    keys = list(dict.fromkeys((o.family, o.bug) for o in outcomes))
    for fam, bug in keys:
        check = PLANTED[(fam, bug)][0]  # type: ignore[index]
        mine = [o for o in outcomes if (o.family, o.bug) == (fam, bug)]
        text = ", ".join(f"{SHORT.get(o.verdicts.get(check), '-')} ({o.preset})" + (" CRASH" if o.crash else "")
                         for o in mine)
        rows.append([fam, str(bug), check, text, "yes" if all(caught(o) for o in mine) else "NO"])
    return _format(header, rows, markdown)


def _format(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [header, *rows])


def presets_with(check: str) -> list[str]:
    from recipe_callbacks.presets import _MEMBERS

    return [p for p in PRESETS if any(name == check for name, _ in _MEMBERS[p])]


def main(argv: list[str] | None = None) -> int:
    from tests.zoo.families import FAMILIES, PLANTED

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES), help="only this family (repeatable)")
    parser.add_argument("--preset", action="append", choices=PRESETS, help="only this preset (repeatable)")
    parser.add_argument("--no-planted", action="store_true", help="healthy models only")
    parser.add_argument("--no-healthy", action="store_true", help="planted bugs only")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--details", action="store_true", help="print every warn/fail/skip summary")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    families = args.family or list(FAMILIES)
    presets = args.preset or list(PRESETS)
    healthy: list[Outcome] = []
    planted: list[Outcome] = []
    if not args.no_healthy:
        for fam in families:
            for preset in presets:
                o = run_case(fam, None, preset)
                healthy.append(o)
                print(f"[zoo] {fam:<20} {preset:<9} {o.seconds:5.1f}s  alarms: {alarms(o) or 'none'}"
                      + ("  CRASH" if o.crash else ""), file=sys.stderr, flush=True)
    if not args.no_planted:
        for (fam, bug), (check, _) in PLANTED.items():
            if fam not in families:
                continue
            for preset in presets_with(check):
                if preset not in presets:
                    continue
                o = run_case(fam, bug, preset)
                planted.append(o)
                print(f"[zoo] {fam:<20} {bug:<18} {preset:<9} {o.seconds:5.1f}s  {check}: {o.verdicts.get(check)}",
                      file=sys.stderr, flush=True)
    if healthy:
        print("Healthy models: verdict per check (full/skeleton)\n")
        print(healthy_table(healthy, args.markdown))
    if planted:
        print("\nPlanted bugs\n")
        print(planted_table(planted, args.markdown))
    bad = [o for o in healthy if alarms(o) or o.crash] + [o for o in planted if o.crash or not caught(o)]
    if args.details or bad:
        skips = ", skips" if args.details else ""
        print(f"\nDetails (warn/fail on healthy models, crashes, missed bugs{skips})")
        for o in healthy + planted:
            for check, lines in o.summaries.items():
                for line in lines:
                    status = line.split(":", 1)[0]
                    if (status in ("warn", "fail") and o.bug is None) or (args.details and status == "skip"):
                        print(f"- {o.family} [{o.preset}] {check}: {line}")
            if o.crash:
                print(f"- {o.family} [{o.preset}] CRASH: {o.crash}")
            if o.bug is not None and not caught(o):
                check = PLANTED[(o.family, o.bug)][0]
                print(f"- {o.family}/{o.bug} [{o.preset}] MISSED by {check}: {o.summaries.get(check)}")
    total = sum(len(o.verdicts) for o in healthy)
    false_alarms = sum(len(alarms(o)) for o in healthy)
    print(f"\n{false_alarms} warn/fail in {total} healthy verdicts, {sum(bool(o.crash) for o in healthy + planted)} "
          f"crashes, {sum(caught(o) for o in planted)}/{len(planted)} planted bugs caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
