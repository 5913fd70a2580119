"""The recipe-callbacks command, end to end on real runs the suite wrote: report, compare, exit codes
and the errors that name the path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import recipe_callbacks as rc
from recipe_callbacks.plumbing.command_line import main
from tests.support import TinyClassifier, blobs, fast_trainer, loader


def _train(root: Path, name: str, *, seed: int = 0, lr: float = 0.05, seeded: bool = True) -> Path:
    callbacks: list[Any] = []
    if seeded:
        callbacks.append(rc.SeedEverything(seed=seed, deterministic=True))
    model = TinyClassifier(lr=lr)
    model.save_hyperparameters({"lr": lr})
    callbacks += [
        rc.FullEvalSet(),
        rc.UpdateRatioMonitor(every_n_steps=2, on_fail="ignore"),
        rc.RecipeReport(print_report=False),
    ]
    trainer = fast_trainer(root / name, max_epochs=3, callbacks=callbacks, deterministic=seeded, log_every_n_steps=1)
    trainer.fit(model, loader(blobs(256), shuffle=True), loader(blobs(256, seed=1)))
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "base": _train(root, "base"),
        "again": _train(root, "again"),
        "seed1": _train(root, "seed1", seed=1),
        "good_lr": _train(root, "good_lr", lr=0.5),
        "huge_lr": _train(root, "huge_lr", lr=20.0),
        "unseeded": _train(root, "unseeded", seeded=False),
    }


def _run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_report_json_has_the_run_section(runs: dict[str, Path]) -> None:
    payload = json.loads((runs["base"] / "run" / "recipe_report.json").read_text())
    run = payload["run"]
    assert run["seed"] == 0 and run["deterministic"] is True
    assert run["package_version"] == rc.__version__
    seeder = next(f for f in payload["findings"] if f["check"] == "SeedEverything")
    assert run["fingerprints"]["weights"] in seeder["summary"] and run["fingerprints"]["batch"] in seeder["summary"]
    losses = run["train_loss"]
    assert len(losses["values"]) == run["global_step"] == 48  # 3 epochs of 16 batches
    assert losses["steps"][:3] == [0, 1, 2]
    assert run["hparams"] == {"lr": 0.05} and run["settings"]["optimizer.0.lr"] == 0.05


def test_same_seed_deterministic_runs_compare_identical(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "compare", runs["base"], runs["again"], "--expect", "identical", "--width", "100")
    assert code == 0
    assert "IDENTICAL" in out and "--expect identical: met" in out
    assert max(len(line) for line in out.splitlines()) <= 100  # the console table fits the width
    code, out, _ = _run(capsys, "compare", runs["base"], runs["again"], "--format", "md")
    assert code == 0 and "| training loss | 48 batches | 48 batches | identical bit for bit over 48 batches |" in out


def test_different_seed_shows_fingerprints_and_first_diverging_step(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "compare", runs["base"], runs["seed1"], "--expect", "identical", "--format", "json")
    assert code == 1
    c = json.loads(out)["comparisons"][0]
    assert c["fingerprints_equal"] is False and c["seeds"] == [0, 1]
    assert c["fingerprints_a"]["weights"] != c["fingerprints_b"]["weights"]
    base = json.loads((runs["base"] / "run" / "recipe_report.json").read_text())["run"]["train_loss"]["values"]
    other = json.loads((runs["seed1"] / "run" / "recipe_report.json").read_text())["run"]["train_loss"]["values"]
    first = next(i for i, (a, b) in enumerate(zip(base, other, strict=True)) if a != b)
    assert c["divergence"]["first_index"] == first and c["divergence"]["abs_diff"] == abs(base[first] - other[first])
    assert c["reasons"][0].startswith("seed:")


def test_higher_lr_shows_status_changes_intervals_and_hparams(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "compare", runs["base"], runs["huge_lr"], "--expect", "better", "--format", "md")
    assert code == 1  # a learning rate 400x higher did not help
    assert "| UpdateRatioMonitor | PASS | FAIL |" in out
    assert "| lr | 0.05 | 20.0 |" in out and "| optimizer.0.lr | 0.05 | 20.0 |" in out
    figures = [line for line in out.splitlines() if line.startswith("| val ")]
    assert figures and all("±" in line for line in figures)
    assert "--expect better: NOT met" in out
    code, out, _ = _run(capsys, "compare", runs["base"], runs["good_lr"], "--expect", "better", "--metric", "loss")
    assert code == 0 and "better, beyond the noise" in " ".join(out.split())
    code, out, _ = _run(capsys, "compare", runs["base"], runs["seed1"], "--expect", "better", "--format", "html")
    assert code == 1 and "<table>" in out and "no evidence" in out  # overlapping intervals


def test_a_logged_scalar_as_the_training_loss(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    # TinyClassifier logs "train_loss" every step; TensorBoard holds it as float32
    code, out, _ = _run(capsys, "compare", runs["base"], runs["seed1"], "--loss-tag", "train_loss", "--format", "json")
    divergence = json.loads(out)["comparisons"][0]["divergence"]
    assert code == 0 and divergence["length_a"] == 48 and divergence["first_index"] is not None
    code, _, err = _run(capsys, "compare", runs["base"], runs["again"], "--loss-tag", "no_such_tag")
    assert code == 2 and "no scalar 'no_such_tag'" in err and str(runs["base"] / "run") in err


def test_several_runs_one_row_each_against_the_first(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "compare", runs["base"], runs["again"], runs["seed1"], runs["huge_lr"], "--format", "md"
    )
    assert code == 0  # nothing expected
    rows = [line for line in out.splitlines() if line.startswith(f"| {runs['base'].parent}")]
    assert len(rows) == 3
    assert "| identical |" in rows[0] and "DIFFERENT" in rows[1] and "lr, optimizer.0.lr" in rows[2]
    code, _, _ = _run(capsys, "compare", runs["base"], runs["again"], runs["seed1"], "--expect", "identical")
    assert code == 1


def test_report_prints_the_checklist_again(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "report", runs["base"] / "run", "--format", "md")
    assert code == 0
    assert out.strip() == (runs["base"] / "run" / "recipe_report.md").read_text().strip()
    code, out, _ = _run(capsys, "report", runs["base"], "--format", "json")
    assert json.loads(out)["run"]["seed"] == 0
    code, out, _ = _run(capsys, "report", runs["base"], "--width", "100")
    assert code == 0
    lines = out.rstrip("\n").splitlines()
    assert lines and max(len(line) for line in lines) <= 100
    assert any("SeedEverything" in line and "PASS" in line for line in lines)
    code, out, _ = _run(capsys, "report", runs["base"], "--format", "html")
    assert code == 0 and out.startswith("<!DOCTYPE html>") and 'id="check-seed_everything"' in out


def test_bad_input_names_the_path(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, "compare", empty, runs["base"])
    assert code == 2 and str(empty) in err and "holds no run" in err
    old = tmp_path / "old"
    old.mkdir()
    payload = json.loads((runs["base"] / "run" / "recipe_report.json").read_text())
    (old / "recipe_report.json").write_text(
        json.dumps({**payload, "run": {**payload["run"], "package_version": "0.0.1"}})
    )
    code, _, err = _run(capsys, "compare", runs["base"], old)
    assert code == 2 and str(old / "recipe_report.json") in err and "0.0.1" in err
    assert _run(capsys, "compare", runs["base"], old, "--any-version")[0] == 0
    del payload["run"]
    (old / "recipe_report.json").write_text(json.dumps(payload))
    code, _, err = _run(capsys, "compare", runs["base"], old)
    assert code == 2 and "no 'run' section" in err
    code, _, err = _run(capsys, "compare", runs["base"], runs["unseeded"], "--expect", "identical")
    assert code == 2 and str(runs["unseeded"]) in err and "no fingerprints" in err and "SeedEverything" in err


def test_python_dash_m_and_the_console_script(runs: dict[str, Path]) -> None:
    args = ["compare", str(runs["base"]), str(runs["again"]), "--expect", "identical"]
    done = subprocess.run(
        [sys.executable, "-m", "recipe_callbacks", *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    script = Path(sys.executable).parent / "recipe-callbacks"
    done = subprocess.run(
        [str(script), *args[:2], str(runs["seed1"]), "--expect", "identical"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and "seeded differently" in " ".join(done.stdout.split())
