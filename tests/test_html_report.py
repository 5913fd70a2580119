"""recipe_report.html: self-contained, the checklist with each check's pictures, numbers and
advice, and rendered by a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from recipe_callbacks import RecipeCallback, RecipeReport
from tests.support import TinyClassifier, blobs, fast_trainer, loader

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# a picture a person would spot: a blue square with a yellow band
PICTURE = np.zeros((60, 80, 3), dtype=np.uint8)
PICTURE[..., 2] = 200
PICTURE[20:40, :, :2] = 230


class Leaky(RecipeCallback):
    """Logs a picture and a text, and fails with advice, on the first batch."""

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.log_image(trainer, "dependency_matrix", PICTURE)
            self.log_text(trainer, "layer_scan", "| layer | leak |\n|---|---|\n| net.0 | 0.5 |")
            self.report(trainer, "fail", "samples 0 and 1 leak", {"max_leak": 0.52, "num_probes": 4.0},
                        "look for a reshape that mixes the batch")


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("html")
    trainer = fast_trainer(root, callbacks=[Leaky(on_fail="ignore"), RecipeReport(False)], max_steps=2)
    trainer.fit(TinyClassifier(), loader(blobs()))
    return Path(trainer.logger.log_dir) / "recipe_report.html"


def test_page_is_self_contained_with_pictures_numbers_and_advice(report_page: Path) -> None:
    page = report_page.read_text()
    assert re.findall(r'src="([^"]*)"', page) and all(s.startswith("data:image/png;base64,")
                                                      for s in re.findall(r'src="([^"]*)"', page))
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))  # links stay on the page
    assert "<link" not in page and "@import" not in page
    section = page[page.index('id="check-leaky"'):]
    assert "samples 0 and 1 leak" in section and "look for a reshape that mixes the batch" in section
    assert "<td>max_leak</td><td>0.52</td>" in section and "<td>num_probes</td><td>4</td>" in section
    assert "dependency_matrix (step 1)" in section
    assert "<td>net.0</td>" in section  # the logged Markdown table, rendered
    assert "Recipe steps with no callback on the Trainer" in page


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                    reason="headless Chromium is not installed (.ci/run installs it)")
def test_chromium_renders_the_page(report_page: Path, tmp_path: Path) -> None:
    url = report_page.resolve().as_uri()
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", url, profile=tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    shown = re.search(r'data-pictures-shown="(\d+)"', dom.stdout)
    assert shown is not None and int(shown.group(1)) == dom.stdout.count("<img ") >= 1  # every picture decoded
    shot = tmp_path / "report.png"
    run = _chromium("--window-size=1100,1400", "--hide-scrollbars", f"--screenshot={shot}", url,
                    profile=tmp_path / "p2")
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels[:: max(1, len(pixels) // 200_000)]}
    assert len(colours) > 50  # text, badges and pictures, not a blank page
    fail_red = np.all(np.abs(pixels.astype(int) - (207, 34, 46)) <= 8, axis=1).sum()
    picture_blue = np.all(np.abs(pixels.astype(int) - (0, 0, 200)) <= 8, axis=1).sum()
    assert fail_red > 100 and picture_blue > 1000  # the FAIL badge and the logged picture are on screen
    if os.environ.get("RECIPE_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["RECIPE_KEEP_SCREENSHOT"])
