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


def test_a_preset_wide_argument_has_one_meaning_across_the_members(tmp_path: Path) -> None:
    # `tolerance` is InitLossCheck's relative band; the dependency checks' own limit is `max_dependency`,
    # so a preset-wide tolerance=0.2 no longer hides a real cross-sample leak below 0.2.
    from tests.support import blobs, fast_trainer, loader
    from tests.test_batch_independence_check import ViewMixer

    built = presets.callbacks("full", tolerance=0.2, on_fail="ignore")
    by_name = {type(cb).__name__: cb for cb in built}
    assert by_name["InitLossCheck"].tolerance == 0.2
    assert by_name["BatchIndependenceCheck"].max_dependency == 1e-4
    assert by_name["CausalityCheck"].max_dependency == 1e-4
    for other in ("EvalModeCheck", "LeakageCheck"):  # their own tolerances keep their defaults
        if other in by_name:
            assert by_name[other].tolerance == type(by_name[other])().tolerance
    check = by_name["BatchIndependenceCheck"]
    trainer = fast_trainer(tmp_path, max_steps=2, callbacks=[check])
    trainer.fit(ViewMixer(), loader(blobs(32)))
    (finding,) = check.findings
    assert finding.status == "fail" and finding.values["max_leak"] > 1e-4, finding.message()
    # A preset-wide task means the same in every member that takes it, and builds the `full` preset.
    for task in ("binary", "multiclass", "regression"):
        members = {type(cb).__name__: cb for cb in presets.callbacks("full", task=task)}
        assert all(members[n].task == task for n in
                   ("DataInspector", "FullEvalSet", "InitLossCheck", "PredictionDynamicsLogger"))


def test_presets_respect_the_users_seed(tmp_path: Path) -> None:
    # A script that seeds with 42, builds the Trainer with a preset and then the model: the preset used
    # to re-seed with 0 (other weights) and to warn "model built before seeding".
    import warnings

    import lightning.pytorch as pl
    import torch

    from recipe_callbacks import RecipeWarning, SeedEverything
    from tests.support import TinyClassifier, blobs, fast_trainer, loader

    def initial_weights(with_preset: bool) -> tuple[torch.Tensor, list[Any]]:
        pl.seed_everything(42, verbose=False)
        cbs = presets.callbacks("skeleton", on_fail="ignore") if with_preset else []
        model = TinyClassifier()
        start = model.net[0].weight.detach().clone()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            fast_trainer(tmp_path / str(with_preset), callbacks=cbs, max_steps=2).fit(model, loader(blobs(32)))
        return start, [w for w in record if issubclass(w.category, RecipeWarning) and "seeding" in str(w.message)]

    plain, _ = initial_weights(False)
    seeded, seed_warnings = initial_weights(True)
    assert torch.equal(plain, seeded) and not seed_warnings
    # The preset's SeedEverything reports the user's seed; an explicit seed= still seeds.
    pl.seed_everything(42, verbose=False)
    (seeder,) = [cb for cb in presets.callbacks("skeleton") if isinstance(cb, SeedEverything)]
    assert seeder.seed == 42 and seeder.user_seeded
    assert SeedEverything(seed=3).seed == 3 and not SeedEverything(seed=3).user_seeded


SEEDED_SCRIPT = textwrap.dedent(
    """
    import hashlib
    import sys
    import warnings
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader
    from examples.digits import DigitsCNN, digits_datasets

    def digest(module):
        h = hashlib.sha256()
        for name, value in sorted(module.state_dict().items()):
            h.update(name.encode()); h.update(value.detach().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    class Model(DigitsCNN):
        def on_train_start(self):  # after every callback's on_fit_start and on_train_start
            print("AT_TRAIN_START", digest(self))

    warnings.simplefilter("always")
    pl.seed_everything(42)
    train, val = digits_datasets()
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=1, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    model = Model()  # built after seeding, after the Trainer (whose RECIPE_PRESET adds the preset)
    print("BUILT", digest(model))
    trainer.fit(model, DataLoader(train, batch_size=32), DataLoader(val, batch_size=64))
    print("CALLBACKS", ",".join(type(cb).__name__ for cb in trainer.callbacks))
    seeder = [cb for cb in trainer.callbacks if type(cb).__name__ == "SeedEverything"]
    print("SEEDER", [(cb.seed, cb.user_seeded, [f.status for f in cb.findings]) for cb in seeder])
    """
)


def _seeded_script(tmp_path: Path, preset: str | None) -> dict[str, str]:
    script = tmp_path / "seeded.py"
    script.write_text(SEEDED_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RECIPE_PRESET", "PL_GLOBAL_SEED")}
    env["PYTHONPATH"] = str(ROOT)
    if preset is not None:
        env["RECIPE_PRESET"] = preset
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(x.split(" ", 1) for x in done.stdout.splitlines() if x.split(" ", 1)[0].isupper() and " " in x)
    lines["OUTPUT"] = done.stdout + done.stderr
    return lines


def test_recipe_preset_variable_keeps_the_scripts_seed_and_initial_weights(tmp_path: Path) -> None:
    plain = _seeded_script(tmp_path / "plain", None) if (tmp_path / "plain").mkdir() is None else {}
    with_preset = _seeded_script(tmp_path / "preset", "skeleton") if (tmp_path / "preset").mkdir() is None else {}
    assert "SeedEverything" in with_preset["CALLBACKS"] and "SeedEverything" not in plain["CALLBACKS"]
    # The same model, built after seed_everything(42), and still the same when training starts.
    assert with_preset["BUILT"] == plain["BUILT"]
    assert with_preset["AT_TRAIN_START"] == plain["AT_TRAIN_START"] == plain["BUILT"]
    assert with_preset["SEEDER"] == "[(42, True, ['pass'])]"  # the user's seed, kept, no warning
    assert "built before seeding" not in with_preset["OUTPUT"]


def test_lightning_cli_seed_is_kept_and_gives_the_same_weights(tmp_path: Path) -> None:
    import warnings

    from recipe_callbacks import RecipeWarning, SeedEverything
    from recipe_callbacks.seed_everything import weights_fingerprint

    def run(with_preset: bool) -> tuple[str, list[str], list[Any]]:
        args = ["--seed_everything=42", f"--trainer.default_root_dir={tmp_path / str(with_preset)}",
                "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.logger=false",
                "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false"]
        if with_preset:
            args += ["--trainer.callbacks+=recipe_callbacks.presets.RecipePreset", "--trainer.callbacks.name=skeleton"]
        cli = _cli(args)
        built = weights_fingerprint(cli.model)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        seeders = [cb for cb in cli.trainer.callbacks if isinstance(cb, SeedEverything)]
        return built, [str(w.message) for w in record if issubclass(w.category, RecipeWarning)], seeders

    plain_weights, _, none = run(False)
    preset_weights, recipe_warnings, (seeder,) = run(True)
    assert not none
    assert preset_weights == plain_weights  # LightningCLI seeded both with 42 before building the model
    assert seeder.seed == 42 and seeder.user_seeded
    assert seeder.weights_fingerprint == plain_weights  # the fingerprint of the seeded run
    assert not [w for w in recipe_warnings if "seeding" in w], recipe_warnings
    assert [f.status for f in seeder.findings] == ["pass"]
