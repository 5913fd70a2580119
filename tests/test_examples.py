"""The examples run end to end (shortened) and show what they promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples import char_lm, digits, imbalanced_fix_bias


def test_digits_demo_trains_and_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert digits.main(["--epochs", "2", "--log-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (report_dir,) = (tmp_path / "digits").iterdir()
    assert f"tensorboard --logdir {(tmp_path / 'digits').resolve()}" in out
    data = json.loads((report_dir / "recipe_report.json").read_text())
    checks = {f["check"] for f in data["findings"]}
    assert {"InitLossCheck", "FullEvalSet", "OverfitOneBatch", "InputIndependentBaseline"} <= checks
    # the healthy demo model passes every check that judged it; nothing warns or fails
    assert {f["status"] for f in data["findings"]} <= {"pass", "skip"}
    markdown = (report_dir / "recipe_report.md").read_text()
    assert "| 2d/2e | Verify loss at init; init well | InitLossCheck | PASS |" in markdown


def test_digits_help_explains_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        digits.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--preset" in out and "--epochs" in out and "--log-dir" in out


def test_fix_bias_reaches_the_prior_entropy_on_imbalanced_digits(tmp_path: Path) -> None:
    plain = imbalanced_fix_bias.run(fix_bias=False, max_steps=2, log_dir=str(tmp_path))
    fixed = imbalanced_fix_bias.run(fix_bias=True, max_steps=2, log_dir=str(tmp_path))
    assert [f.status for f in plain.findings] == ["warn"]
    assert "default bias on an imbalanced task" in plain.findings[0].summary
    assert {f.status for f in fixed.findings} == {"pass"}


@pytest.mark.parametrize("leak", [False, True])
def test_char_lm_causality(leak: bool, tmp_path: Path) -> None:
    trainer = char_lm.run(leak=leak, max_steps=2, log_dir=str(tmp_path))
    (check,) = [cb for cb in trainer.callbacks if type(cb).__name__ == "CausalityCheck"]
    (finding,) = check.findings
    assert finding.status == ("fail" if leak else "pass")
    if leak:
        assert "up to 1 step(s) ahead" in finding.summary
