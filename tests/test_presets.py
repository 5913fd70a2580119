"""The three ways to switch the recipe on: in code, from LightningCLI, and with RECIPE_PRESET."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

import recipe_callbacks
from recipe_callbacks import RecipeReport, presets
from recipe_callbacks.presets import RecipePreset, callbacks_from_environment

ROOT = Path(__file__).resolve().parent.parent


def _names(callbacks: list[Any]) -> list[str]:
    return [type(cb).__name__ for cb in callbacks]


def test_names_and_unknown_preset() -> None:
    assert presets.names() == ["full", "monitor", "skeleton"]
    listing = r"\['full', 'monitor', 'skeleton'\]"
    with pytest.raises(ValueError, match=rf"unknown recipe preset 'fast'; the presets are {listing}"):
        presets.callbacks("fast")
    with pytest.raises(ValueError, match="RecipePreset"):
        RecipePreset("fast")  # type: ignore[arg-type]


def test_every_public_callback_is_in_full_and_every_preset_ends_with_the_report() -> None:
    public = {name for name in recipe_callbacks.__all__ if isinstance(getattr(recipe_callbacks, name), type)}
    full = set(_names(presets.callbacks("full")))
    assert {n for n in public if n not in {"RecipeCallback", "Finding", "RecipeCheckError", "RecipeWarning",
                                          "BatchResolutionError", "ResolvedBatch"}} <= full
    for name in presets.names():
        built = presets.callbacks(name)
        assert isinstance(built[-1], RecipeReport)
        assert len(set(_names(built))) == len(built)  # no class twice
    assert "CausalityCheck" not in _names(presets.callbacks("skeleton"))
    assert "SeedEverything" not in _names(presets.callbacks("monitor"))


def test_overrides_reach_the_members() -> None:
    built = presets.callbacks("skeleton", on_fail="raise", seed=7, InitLossCheck={"tolerance": 0.2})
    assert all(cb.on_fail == "raise" for cb in built if isinstance(cb, recipe_callbacks.RecipeCallback))
    (init,) = [cb for cb in built if type(cb).__name__ == "InitLossCheck"]
    assert init.tolerance == 0.2
    (seed,) = [cb for cb in built if type(cb).__name__ == "SeedEverything"]
    assert seed.seed == 7
    with pytest.raises(ValueError, match=r"no member of the preset takes \['colour'\]"):
        presets.callbacks("monitor", colour="red")


def test_trainer_kwargs_set_the_flags() -> None:
    assert presets.trainer_kwargs("skeleton")["deterministic"] is True
    assert "deterministic" not in presets.trainer_kwargs("monitor")


def test_environment_factory_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECIPE_PRESET", raising=False)
    assert callbacks_from_environment() == []
    monkeypatch.setenv("RECIPE_PRESET", "monitor")
    (preset,) = callbacks_from_environment()
    assert isinstance(preset, RecipePreset) and preset.name == "monitor"
    monkeypatch.setenv("RECIPE_PRESET", "nope")
    with pytest.warns(recipe_callbacks.RecipeWarning, match="not a recipe preset"):
        assert callbacks_from_environment() == []


TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader
    from examples.digits import DigitsCNN, digits_datasets
    from recipe_callbacks import FullEvalSet

    user = [FullEvalSet()] if "--with-user-callback" in sys.argv else []
    train, val = digits_datasets()
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=1, logger=False, callbacks=user,
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(DigitsCNN(), DataLoader(train, batch_size=32), DataLoader(val, batch_size=64))
    print("CALLBACKS", ",".join(type(cb).__name__ for cb in trainer.callbacks))
    """
)


def _train_in_subprocess(tmp_path: Path, preset: str | None, *extra: str) -> tuple[list[str], str]:
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "RECIPE_PRESET"}
    env["PYTHONPATH"] = str(ROOT)
    if preset is not None:
        env["RECIPE_PRESET"] = preset
    done = subprocess.run(
        [sys.executable, str(script), *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("CALLBACKS "))
    return line.removeprefix("CALLBACKS ").split(","), done.stdout + done.stderr


def test_no_variable_adds_nothing(tmp_path: Path) -> None:
    names, _ = _train_in_subprocess(tmp_path, None)
    assert not any(n.startswith("Recipe") for n in names)


def test_variable_switches_a_preset_on_without_code_change(tmp_path: Path) -> None:
    names, output = _train_in_subprocess(tmp_path, "monitor", "--with-user-callback")
    expected = [n for n in _names(presets.callbacks("monitor"))]
    assert "RecipePreset" in names and set(expected) <= set(names)
    assert names.count("FullEvalSet") == 1  # the user's own copy, not a second one
    assert (tmp_path / "recipe_report.md").exists()
    assert "Recipe report: " in output


def test_unknown_variable_is_a_message_not_a_crash(tmp_path: Path) -> None:
    names, output = _train_in_subprocess(tmp_path, "turbo")
    assert "not a recipe preset" in output and "RecipePreset" not in names


def _cli(args: list[str]) -> Any:
    from examples.cli import main

    return main(args, run=False)


def test_cli_yaml_switches_a_preset_on(tmp_path: Path) -> None:
    cli = _cli(["--config", str(ROOT / "examples" / "cli_config.yaml"),
                f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2"])
    (preset,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, RecipePreset)]
    assert preset.name == "skeleton"
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    names = _names(cli.trainer.callbacks)
    assert set(_names(presets.callbacks("skeleton"))) <= set(names)
    assert (Path(cli.trainer.log_dir) / "recipe_report.json").exists()


def test_cli_single_callback_with_arguments() -> None:
    cli = _cli(["--trainer.callbacks+=recipe_callbacks.InitLossCheck", "--trainer.callbacks.tolerance=0.2",
                "--trainer.callbacks+=recipe_callbacks.presets.RecipePreset", "--trainer.callbacks.name=monitor"])
    (check,) = [cb for cb in cli.trainer.callbacks if type(cb).__name__ == "InitLossCheck"]
    assert check.tolerance == 0.2
    (preset,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, RecipePreset)]
    assert preset.name == "monitor"


def test_cli_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from examples.cli import main

    args = ["fit", "--config", str(ROOT / "examples" / "cli_config.yaml"),
            "--trainer.callbacks+=recipe_callbacks.InitLossCheck", "--trainer.callbacks.tolerance=0.2"]
    with pytest.raises(SystemExit):
        main([*args, "--print_config"])
    printed = capsys.readouterr().out
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(saved), "--print_config"])
    again = capsys.readouterr().out
    assert yaml.safe_load(again) == yaml.safe_load(printed)
    callbacks = yaml.safe_load(printed)["trainer"]["callbacks"]
    assert [c["class_path"] for c in callbacks] == ["recipe_callbacks.presets.RecipePreset",
                                                    "recipe_callbacks.InitLossCheck"]
    assert callbacks[1]["init_args"]["tolerance"] == 0.2
