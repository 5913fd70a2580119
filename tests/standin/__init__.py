"""A stand-in accelerator that catches mixed-device bugs without a GPU.

``load()`` builds ``standin.cpp`` once (``torch.utils.cpp_extension``, cached under
``.venv/standin-build`` of the repository) and registers it as PyTorch's PrivateUse1 backend under
the name ``standin``: tensors in host memory, CPU kernels, but a distinct device, so an operator
that mixes a ``standin`` tensor with a CPU tensor raises "Expected all tensors to be on the same
device" as CUDA does. ``syncs()`` counts blocking device-to-host reads (copies to the CPU,
``.item()``, ``bool()``/``float()`` of a tensor). ``StandInAccelerator`` lets a real Lightning
``Trainer`` train on it: ``Trainer(accelerator=StandInAccelerator(), devices=1)``.
"""

from __future__ import annotations

import os
import sys
import threading
import types
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.accelerators import Accelerator
from typing_extensions import override

NAME = "standin"
_ROOT = Path(__file__).resolve().parents[2]
_lock = threading.Lock()
_extension: Any = None


def build_directory() -> Path:
    """Where the compiled extension is cached (beside the interpreter's virtual environment)."""
    venv = Path(sys.prefix)
    base = venv if (venv / "pyvenv.cfg").exists() else _ROOT / ".venv"
    return base / "standin-build" / f"torch-{torch.__version__}".replace("+", "_")


def load() -> Any:
    """Build (first call only) and register the ``standin`` device; returns the extension module."""
    global _extension
    with _lock:
        if _extension is not None:
            return _extension
        from torch.utils import cpp_extension

        # ninja may be installed in the environment's bin without being on PATH
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        directory = build_directory()
        directory.mkdir(parents=True, exist_ok=True)
        ext = cpp_extension.load(
            name="recipe_standin",
            sources=[str(Path(__file__).with_name("standin.cpp"))],
            build_directory=str(directory),
            extra_cflags=["-O1"],
            verbose=False,
        )
        torch.utils.rename_privateuse1_backend(NAME)
        torch._register_device_module(NAME, _device_module())
        torch.utils.generate_methods_for_privateuse1_backend(for_tensor=True, for_module=True, for_storage=True)
        _extension = ext
        return ext


def _device_module() -> types.ModuleType:
    module = types.ModuleType(f"torch.{NAME}")
    module.is_available = lambda: True  # type: ignore[attr-defined]
    module.device_count = lambda: 1  # type: ignore[attr-defined]
    module.current_device = lambda: 0  # type: ignore[attr-defined]
    module.set_device = lambda device: None  # type: ignore[attr-defined]
    module.synchronize = lambda device=None: None  # type: ignore[attr-defined]
    module.is_initialized = lambda: True  # type: ignore[attr-defined]
    module._is_in_bad_fork = lambda: False  # type: ignore[attr-defined]
    module.manual_seed_all = lambda seed: None  # type: ignore[attr-defined]
    module.get_rng_state = lambda device="standin": torch.get_rng_state()  # type: ignore[attr-defined]
    module.set_rng_state = lambda state, device="standin": None  # type: ignore[attr-defined]
    return module


def device() -> torch.device:
    load()
    return torch.device(NAME, 0)


def syncs() -> int:
    """Blocking device-to-host reads since the process started."""
    return int(load().syncs())


class StandInAccelerator(Accelerator):
    """Lightning's accelerator for the ``standin`` device (one device)."""

    @override
    def setup_device(self, device: torch.device) -> None:
        if device.type != NAME:
            raise ValueError(f"StandInAccelerator: device must be {NAME!r}, got {device}")

    @override
    def teardown(self) -> None:
        pass

    @override
    def get_device_stats(self, device: Any) -> dict[str, Any]:
        return {}

    @staticmethod
    @override
    def parse_devices(devices: Any) -> Any:
        return [0] if devices in (1, "1", "auto", [0]) else devices

    @staticmethod
    @override
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        load()
        return [torch.device(NAME, i) for i in (devices if isinstance(devices, list) else range(int(devices)))]

    @staticmethod
    @override
    def auto_device_count() -> int:
        return 1

    @staticmethod
    @override
    def is_available() -> bool:
        return True

    @staticmethod
    @override
    def name() -> str:
        return NAME


def trainer_flags() -> dict[str, Any]:
    """``Trainer`` flags that train on the stand-in device (Lightning puts a custom accelerator's
    single device on the CPU unless the strategy names the device)."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    return {"strategy": SingleDeviceStrategy(device=device(), accelerator=StandInAccelerator()), "devices": 1}
