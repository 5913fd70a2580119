"""Test-wide settings: one torch thread per test process (the suite runs in parallel on 2 cores)."""

import torch

torch.set_num_threads(1)
