"""DistributedConsistencyCheck under real ddp_spawn with 2 CPU processes: healthy DDP passes, data
that is not sharded and parameters that drift apart fail, ``on_fail="raise"`` stops every rank
without a hang; a single process gets a skip with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from recipe_callbacks import DistributedConsistencyCheck, RecipeReport
from recipe_callbacks.core.rank_checksums import checksums, differing_columns
from tests.support import TinyClassifier, blobs, fast_trainer, loader


class ClipsOnRankZero(TinyClassifier):
    """Bug: weight clipping written by hand inside ``if self.trainer.is_global_zero``."""

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.trainer.is_global_zero:
            with torch.no_grad():
                self.net[0].weight.clamp_(-0.1, 0.1)


def _ddp_findings(root: Path, model: TinyClassifier, **kw: Any) -> dict[str, dict[str, Any]]:
    check = DistributedConsistencyCheck(first_steps=2, every_n_steps=3, on_fail=kw.pop("on_fail", "ignore"))
    trainer = fast_trainer(
        root,
        callbacks=[check, RecipeReport(print_report=False)],
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=4,
        max_epochs=-1,
        limit_val_batches=0,
        **kw,
    )
    torch.manual_seed(0)
    trainer.fit(model, loader(blobs(128), batch_size=16, shuffle=True))
    report = json.loads((root / "run" / "recipe_report.json").read_text())  # written by rank 0
    found = [f for f in report["findings"] if f["check"] == "DistributedConsistencyCheck"]
    return {("data" if "batch" in f["summary"] else "parameters"): f for f in found}


def test_healthy_ddp_passes_and_reports_the_effective_batch_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    found = _ddp_findings(tmp_path, TinyClassifier(), accumulate_grad_batches=2)
    assert found["data"]["status"] == "pass" and "differs on every one of the 2 ranks" in found["data"]["summary"]
    assert found["data"]["values"]["effective_batch_size"] == 2 * 16 * 2
    params = found["parameters"]
    assert params["status"] == "pass" and params["values"]["checks"] == 4, params  # setup, steps 1 and 2, step 3
    assert params["values"]["last_checked_step"] == 3


def test_unsharded_data_and_drifting_parameters_fail(tmp_path: Path) -> None:
    torch.manual_seed(0)
    found = _ddp_findings(tmp_path, ClipsOnRankZero(), use_distributed_sampler=False)
    data, params = found["data"], found["parameters"]
    assert data["status"] == "fail" and "ranks [0, 1] got the same first training batch" in data["summary"]
    assert "RandomSampler, not a DistributedSampler" in data["summary"]
    assert data["values"]["effective_batch_size"] == 32  # what the user asked for; the data is the same twice
    assert (
        params["status"] == "fail" and "after optimizer step 2" in params["summary"]
    )  # its hook runs before the module's
    assert "net.0.weight (ranks [1] differ from rank 0)" in params["summary"]
    assert params["values"]["drifting_parameters"] == 1


def test_raise_stops_every_rank_without_a_hang(tmp_path: Path) -> None:
    # Both ranks see the same gathered table, so both raise at the same hook; a hang would hit the
    # suite's timeout instead of raising here.
    # ddp_spawn hands the ranks' error back wrapped in torch's ProcessRaisedException.
    with pytest.raises(Exception, match=r"RecipeCheckError: \[DistributedConsistencyCheck\] FAIL: .* not sharded"):
        _ddp_findings(tmp_path, TinyClassifier(), use_distributed_sampler=False, on_fail="raise")


def test_single_process_skips_with_the_reason(tmp_path: Path) -> None:
    check = DistributedConsistencyCheck()
    fast_trainer(tmp_path, callbacks=[check], max_steps=2).fit(TinyClassifier(), loader(blobs(64)))
    (finding,) = check.findings
    assert finding.status == "skip" and "single process (world_size=1)" in finding.summary


def test_checksums_see_one_bit() -> None:
    a = [torch.randn(3, 4), torch.randn(5)]
    b = [t.clone() for t in a]
    b[1][2] = torch.nextafter(b[1][2], torch.tensor(10.0))
    table = torch.stack([checksums(a), checksums(b)])
    assert differing_columns(table) == [1]


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"every_n_steps": 0}, ValueError, "every_n_steps"),
        ({"first_steps": 1.5}, TypeError, "first_steps"),
        ({"on_fail": "loud"}, ValueError, "on_fail"),
    ],
)
def test_argument_errors_name_the_argument(kwargs: dict[str, Any], error: type[Exception], argument: str) -> None:
    with pytest.raises(error, match=rf"DistributedConsistencyCheck\({argument}="):
        DistributedConsistencyCheck(**kwargs)
