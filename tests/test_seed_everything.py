"""SeedEverything: seeding, fingerprints read back from TensorBoard, the warnings, and exact resume."""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from recipe_callbacks import RecipeReport, RecipeWarning
from recipe_callbacks.core.fingerprints import fingerprint_scalar, fingerprint_tensors
from recipe_callbacks.seed_everything import SeedEverything, weights_fingerprint
from tests.support import TinyClassifier, blobs, fast_trainer, finding_values, read_events, text_values

TAG = "recipe.seed_everything"


class DropoutClassifier(TinyClassifier):
    """TinyClassifier with dropout, so every step draws from torch's generator."""

    def __init__(self) -> None:
        super().__init__(lr=0.1)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def shuffled() -> DataLoader[Any]:
    return DataLoader(blobs(64), batch_size=16, shuffle=True)


def fit(root: Path, model: pl.LightningModule, callbacks: list[Any], epochs: int, **kw: Any) -> pl.Trainer:
    trainer = fast_trainer(root, callbacks=callbacks, max_epochs=epochs, logger=False)
    trainer.fit(model, shuffled(), **kw)
    return trainer


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def finding(cb: SeedEverything, key: str = "") -> Any:
    return cb._findings.get(key)


# ----------------------------------------------------------------- resume: the required test
def resume_run(tmp: Path, with_callback: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Final weights of 3 straight epochs and of 1 epoch + checkpoint + resume to 3.

    Each "script" starts the way a fresh process would: seed (SeedEverything, or plain Lightning's
    seed_everything), build the model, fit. The resumed script is such a fresh start too.
    """

    def script() -> tuple[DropoutClassifier, list[Any]]:
        if with_callback:
            cb = SeedEverything(seed=7)
            return DropoutClassifier(), [cb]
        pl.seed_everything(7, verbose=False)
        return DropoutClassifier(), []

    model, cbs = script()
    fit(tmp / "straight", model, cbs, 3)
    straight = weights(model)

    model, cbs = script()
    first = fit(tmp / "part1", model, cbs, 1)
    ckpt = tmp / "epoch1.ckpt"
    first.save_checkpoint(ckpt)

    model, cbs = script()
    fit(tmp / "part2", model, cbs, 3, ckpt_path=str(ckpt))
    return straight, weights(model)


def test_resume_matches_uninterrupted_run_only_with_seed_everything(tmp_path: Path) -> None:
    straight, resumed = resume_run(tmp_path / "with", with_callback=True)
    assert same(straight, resumed), "with SeedEverything the resumed run must end bit-identical"

    plain_straight, plain_resumed = resume_run(tmp_path / "without", with_callback=False)
    # Plain Lightning saves no RNG state: after the resume the permutation and dropout masks differ.
    assert not same(plain_straight, plain_resumed)


def test_checkpoint_loads_with_weights_only_and_restores_rng(tmp_path: Path) -> None:
    cb = SeedEverything(seed=1)
    trainer = fit(tmp_path, DropoutClassifier(), [cb], 1)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    expected = (random.random(), float(np.random.rand()), torch.rand(3))

    ckpt = torch.load(tmp_path / "a.ckpt", weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if "SeedEverything" in k)
    assert set(state["rng_states"]) >= {"python", "numpy", "torch"}
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    SeedEverything(seed=1).load_state_dict(state)
    assert (random.random(), float(np.random.rand())) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])


def test_no_rng_state_when_switched_off(tmp_path: Path) -> None:
    cb = SeedEverything(seed=1, save_rng_state=False)
    fit(tmp_path, TinyClassifier(), [cb], 1)
    assert "rng_states" not in cb.state_dict()


# ----------------------------------------------------------------- fingerprints
def fingerprint_run(root: Path, seed: int, data_seed: int | None = None) -> tuple[SeedEverything, Any]:
    cb = SeedEverything(seed=seed)
    model = TinyClassifier()
    # data_seed plants the bug of an unseeded data pipeline: a shuffle generator of its own.
    gen = torch.Generator().manual_seed(data_seed) if data_seed is not None else None
    trainer = fast_trainer(root, callbacks=[cb, RecipeReport(print_report=False)], max_steps=2)
    trainer.fit(model, DataLoader(blobs(64), batch_size=16, shuffle=True, generator=gen))
    return cb, read_events(root / "run")


def test_same_seed_same_fingerprints_read_back_from_tensorboard(tmp_path: Path) -> None:
    a, ea = fingerprint_run(tmp_path / "a", seed=3)
    b, eb = fingerprint_run(tmp_path / "b", seed=3)
    _, ec = fingerprint_run(tmp_path / "c", seed=4)
    # one-time values: the check's text in TensorBoard, not single-point scalar charts
    va, vb, vc = (finding_values(e, TAG) for e in (ea, eb, ec))
    for key in ("weights_fingerprint", "batch_fingerprint"):
        assert va[key] == vb[key] != vc[key]
    assert va["weights_fingerprint"] == fingerprint_scalar(a.weights_fingerprint)
    assert va["seed"] == 3.0 and va["deterministic"] == 0.0
    assert not [t for t in ea.Tags()["scalars"] if t.startswith(TAG)]
    text = text_values(ea, f"{TAG}/fingerprints")[0]
    assert a.weights_fingerprint in text and a.batch_fingerprint in text
    assert (a.weights_fingerprint, a.batch_fingerprint) == (b.weights_fingerprint, b.batch_fingerprint)
    f = finding(a)
    assert f.status == "pass" and "changes training on purpose" in f.summary
    assert "weights_fingerprint" in f.advice
    assert f.values["batch_fingerprint"] == fingerprint_scalar(a.batch_fingerprint)
    assert any("SeedEverything" in r and "PASS" in r for r in text_values(ea, "recipe/report")[0].splitlines())


def test_unseeded_data_pipeline_shows_in_batch_fingerprint(tmp_path: Path) -> None:
    # Planted bug: two runs of the same seed whose shuffling draws from an unseeded generator.
    a, _ = fingerprint_run(tmp_path / "a", seed=3, data_seed=11)
    b, _ = fingerprint_run(tmp_path / "b", seed=3, data_seed=12)
    assert a.weights_fingerprint == b.weights_fingerprint
    assert a.batch_fingerprint != b.batch_fingerprint


def test_seeds_at_construction() -> None:
    SeedEverything(seed=5)
    drawn = (random.random(), float(np.random.rand()), torch.rand(2))
    pl.seed_everything(5, verbose=False)
    assert (random.random(), float(np.random.rand())) == drawn[:2]
    assert torch.equal(torch.rand(2), drawn[2])


def test_dict_batches_are_fingerprinted(tmp_path: Path) -> None:
    class DictClassifier(TinyClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self(batch["x"]), batch["y"])

    data = [{"x": x, "y": y} for x, y in blobs(32)]
    cb = SeedEverything(seed=0)
    trainer = fast_trainer(tmp_path, callbacks=[cb], max_steps=1, logger=False)
    trainer.fit(DictClassifier(), DataLoader(data, batch_size=8))  # type: ignore[arg-type]
    assert len(cb.batch_fingerprint) == 16 and finding(cb).status == "pass"


# ----------------------------------------------------------------- warnings
def test_model_built_before_seeding_warns(tmp_path: Path) -> None:
    model = TinyClassifier()  # planted bug: the model exists before the seed is set
    cb = SeedEverything(seed=0)
    with pytest.warns(RecipeWarning, match="built before seeding"):
        fit(tmp_path, model, [cb], 1)
    assert finding(cb, "built_before_seeding").status == "warn"


def test_model_built_after_seeding_passes(tmp_path: Path) -> None:
    cb = SeedEverything(seed=0)
    model = TinyClassifier()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecipeWarning)
        fit(tmp_path, model, [cb], 1)
    assert [f.status for f in cb.findings] == ["pass"]


def seed_worker(worker_id: int) -> None:
    random.seed(worker_id)


def test_user_worker_init_fn_warns(tmp_path: Path) -> None:
    cb = SeedEverything(seed=0)
    model = TinyClassifier()
    trainer = fast_trainer(tmp_path, callbacks=[cb], max_steps=1, logger=False)
    with pytest.warns(RecipeWarning, match="seed_worker"):
        trainer.fit(model, DataLoader(blobs(32), batch_size=8, worker_init_fn=seed_worker))
    assert finding(cb, "worker_init_fn").values["user_worker_init_fns"] == 1.0


def test_deterministic_algorithms_on_during_fit_and_restored_after(tmp_path: Path) -> None:
    seen: list[bool] = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            seen.append(torch.are_deterministic_algorithms_enabled())

    before = torch.are_deterministic_algorithms_enabled()
    cb = SeedEverything(seed=0, deterministic=True)
    model = TinyClassifier()
    fit(tmp_path, model, [cb, Spy()], 1)
    assert seen and all(seen)
    assert finding(cb).values["deterministic"] == 1.0
    assert torch.are_deterministic_algorithms_enabled() == before


# ----------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**32}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"workers": "yes"}, TypeError, "workers"),
        ({"deterministic": 1}, TypeError, "deterministic"),
        ({"save_rng_state": None}, TypeError, "save_rng_state"),
        ({"on_fail": "explode"}, ValueError, "on_fail"),
    ],
)
def test_argument_errors_name_the_argument(kwargs: dict[str, Any], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=rf"SeedEverything\({name}="):
        SeedEverything(**kwargs)


def test_resumed_run_reports_restored_states(tmp_path: Path) -> None:
    cb = SeedEverything(seed=2)
    trainer = fit(tmp_path / "a", TinyClassifier(), [cb], 1)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    cb2 = SeedEverything(seed=2)
    fit(tmp_path / "b", TinyClassifier(), [cb2], 2, ckpt_path=str(tmp_path / "a.ckpt"))
    f = finding(cb2)
    assert f.status == "pass" and "restored" in f.summary and cb.weights_fingerprint in f.summary
    assert cb2.weights_fingerprint == cb.weights_fingerprint


def test_resume_from_a_checkpoint_without_rng_state_warns(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    trainer = fit(tmp_path / "a", TinyClassifier(), [], 1)  # planted: a checkpoint made without the callback
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    cb = SeedEverything(seed=0)
    with pytest.warns(RecipeWarning, match="holds no RNG state"):
        fit(tmp_path / "b", TinyClassifier(), [cb], 2, ckpt_path=str(tmp_path / "plain.ckpt"))
    assert finding(cb).status == "warn"
    off = SeedEverything(seed=0, save_rng_state=False)
    fit(tmp_path / "c", TinyClassifier(), [off], 2, ckpt_path=str(tmp_path / "plain.ckpt"))
    assert finding(off).status == "pass" and "save_rng_state=False" in finding(off).summary


def test_fingerprints_under_ddp_spawn(tmp_path: Path) -> None:
    cb = SeedEverything(seed=3)
    model = TinyClassifier()
    expected = fingerprint_tensors(model.state_dict().items())
    trainer = fast_trainer(tmp_path, callbacks=[cb], max_steps=1, devices=2, strategy="ddp_spawn")
    trainer.fit(model, DataLoader(blobs(64), batch_size=8, shuffle=True))
    ea = read_events(tmp_path / "run")
    shown = finding_values(ea, TAG)
    assert shown["weights_fingerprint"] == fingerprint_scalar(expected)
    assert "batch_fingerprint" in shown
    assert expected in text_values(ea, f"{TAG}/fingerprints")[0]


def test_weights_fingerprint_skips_lazy_parameters() -> None:
    lazy = nn.Sequential(nn.Linear(2, 3), nn.LazyLinear(4))
    plain = nn.Sequential(nn.Linear(2, 3))
    plain.load_state_dict({k: v for k, v in lazy.state_dict().items() if k.startswith("0.")})
    assert weights_fingerprint(lazy) == weights_fingerprint(plain)


def test_pl_global_seed_in_the_environment_is_the_seed_when_nothing_seeded_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `PL_GLOBAL_SEED=4242 python train.py` without a seed_everything call: the variable names the seed,
    # and the generators are seeded with it (not left unseeded, not re-seeded with 0).
    import recipe_callbacks.seed_everything as module

    monkeypatch.setattr(module, "_own_seed", [None])  # this process's own seeding stays this test's
    pl.seed_everything(4242, verbose=False)
    expected = weights(TinyClassifier())
    torch.manual_seed(12345)  # a process whose generator nobody seeded with 4242
    monkeypatch.setenv("PL_GLOBAL_SEED", "4242")
    seeder = SeedEverything()
    assert seeder.seed == 4242 and not seeder.user_seeded
    assert same(weights(TinyClassifier()), expected)
    # After the user's own seed_everything it keeps their seed and does not re-seed.
    module._own_seed[0] = None
    pl.seed_everything(4242, verbose=False)
    state = torch.get_rng_state()
    kept = SeedEverything()
    assert kept.seed == 4242 and kept.user_seeded and torch.equal(torch.get_rng_state(), state)
