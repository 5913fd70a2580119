"""End to end: train with the ``full`` preset, serve the logs with the real TensorBoard server on
127.0.0.1, and read every callback's scalars, images and text back through its HTTP data API."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from examples.digits import DigitsCNN, digits_datasets
from recipe_callbacks import RecipeCallback, presets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode("utf-8"))


def _wait_for(url: str, ready: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = _get(url)
            if ready(last):
                return last
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"TensorBoard did not serve {url} in {timeout} s; last answer: {last}")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[RecipeCallback]]:
    root = tmp_path_factory.mktemp("tb")
    train, val = digits_datasets()
    # A short run samples often. Its filters are still mostly the random init (noise score about 0.9),
    # which FirstLayerFilterViz leaves unjudged by default: a higher threshold gives it a verdict to serve.
    callbacks = presets.callbacks(
        "full", on_fail="ignore", every_n_steps=4, FirstLayerFilterViz={"noise_threshold": 0.95}
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, limit_train_batches=12,
        logger=TensorBoardLogger(str(root), name="full"),
        callbacks=callbacks, enable_progress_bar=False, enable_checkpointing=False, deterministic=True,
        log_every_n_steps=1,
    )
    trainer.fit(DigitsCNN(), DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=128))
    return root, [cb for cb in callbacks if isinstance(cb, RecipeCallback)]


def test_every_callback_is_served(full_run: tuple[Path, list[RecipeCallback]]) -> None:
    root, callbacks = full_run
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(root), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/data/plugin"
        scalars = _wait_for(f"{base}/scalars/tags", lambda d: any(d.values()))
        images = _wait_for(f"{base}/images/tags", lambda d: any(d.values()))
        texts = _wait_for(f"{base}/text/tags", lambda d: any(d.values()))
        (run,) = scalars
        text_tags = {t.removesuffix("/text_summary") for t in texts.get(run, [])}
        served = set(scalars[run]) | set(images.get(run, {})) | text_tags
        assert "recipe/report" in text_tags
        # CausalityCheck has nothing to judge on images, DistributedConsistencyCheck nothing in one process
        # (both report a skip); every other check is served.
        skipped = {cb.check_name for cb in callbacks if cb.findings and all(f.status == "skip" for f in cb.findings)}
        assert skipped == {"CausalityCheck", "DistributedConsistencyCheck"}
        for cb in callbacks:
            mine = sorted(t for t in served if t.startswith(cb.tag_prefix + "/"))
            assert mine or cb.check_name in skipped, f"{cb.check_name}: nothing served under {cb.tag_prefix}/"
        # the values themselves come back through the API
        tag = next(t for t in scalars[run] if t.startswith("recipe."))
        points = _get(f"{base}/scalars/scalars?run={run}&tag={urllib.request.quote(tag)}")
        assert points and all(len(p) == 3 for p in points)
        # one-time values (seed, fingerprints, flags, counts, cost_steps) are text, not single-point charts
        recipe_scalars = [t for t in scalars[run] if t.startswith("recipe.")]
        for tag in recipe_scalars:
            series = _get(f"{base}/scalars/scalars?run={run}&tag={urllib.request.quote(tag)}")
            assert len(series) > 1, f"{tag} is a single-point chart"
        finding_texts = {t for t in text_tags if t.endswith("/finding")}
        assert {f"{cb.tag_prefix}/finding" for cb in callbacks if cb.findings} <= finding_texts
        # Custom Scalars: a category per check with scalars, a chart per quantity family (one unit each)
        layout = _wait_for(f"{base}/custom_scalars/layout", lambda d: bool(d))
        titles = {c["title"] for c in layout["category"]}
        assert titles == {t.split("/")[0] for t in recipe_scalars}
        for category in layout["category"]:
            for chart in category["chart"]:
                quantities = {re.sub(r"_\d+$", "", t.strip("^$").replace("\\", "").rsplit("/", 1)[-1])
                              for t in chart["multiline"]["tag"]}
                assert quantities == {chart["title"]}, chart
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
