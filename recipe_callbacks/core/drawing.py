"""Drawing pictures off the training process: one drawing process builds and renders every chart.

A matplotlib chart costs 50-300 ms to build and render, which on a fast training step is 5-20
steps; a thread cannot take it off the training loop (matplotlib holds the interpreter lock, so
a drawing thread slows the loop down by more than the drawing itself). So rank 0 starts one
drawing process the first time a check draws: a fresh interpreter (``sys.executable``, not a
fork of the training process) that imports only this Lightning-free core, numpy and matplotlib,
builds each chart from the function and the data it is sent, renders it and encodes the PNG,
and sends back the picture. The training process waits for nothing until the end of the fit,
where what is still being drawn is waited for.

Where a drawing process cannot start (or it ends), or with ``RECIPE_DRAWING=inline`` in the
environment, the pictures are drawn in the training process as before: same pictures, same
tags, only the time moves.

A chart is sent as ``(build, args, kwargs)``: ``build`` a function at the top level of a module
of this package (sent by name) that returns a ``matplotlib.figure.Figure`` or an ``(H, W, 3)``
uint8 array; the arguments numbers, strings, lists, dicts, numpy arrays, CPU tensors and the
dataclasses of :mod:`recipe_callbacks.core.pictures`.

Example:
    >>> from recipe_callbacks.core.pictures import bar_chart
    >>> picture = render(bar_chart, (["0", "1"], [3, 1]), {"ylabel": "samples"})
    >>> picture.image.shape, picture.png[:4]
    ((360, 480, 3), b'\\x89PNG')
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

ENVIRONMENT_VARIABLE = "RECIPE_DRAWING"
Build = Callable[..., Any]
_HEADER = struct.Struct("<Q")  # the length of each pickled frame on the pipes
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
# The drawing process imports the core without the package's __init__ (which imports Lightning):
# ``recipe_callbacks`` is registered as a bare package over its directory first.
_BOOTSTRAP = (
    "import os, sys, types\n"
    "if hasattr(os, 'nice'):\n"  # below training: on a busy machine the pictures wait, not the steps
    "    try:\n"
    "        os.nice(10)\n"
    "    except OSError:\n"
    "        pass\n"
    "package = types.ModuleType('recipe_callbacks')\n"
    "package.__path__ = [sys.argv[1]]\n"
    "sys.modules['recipe_callbacks'] = package\n"
    "from recipe_callbacks.core.drawing import serve\n"
    "serve()\n"
)


@dataclass(frozen=True)
class Picture:
    """A drawn picture: the ``(H, W, 3)`` uint8 pixels and the same picture encoded as PNG."""

    image: np.ndarray
    png: bytes


def png_bytes(image: np.ndarray) -> bytes:
    """An ``(H, W, 3)`` uint8 picture as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def render(build: Build, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Picture:
    """Build the chart (``build(*args, **kwargs)``), render it and encode it: what the drawing
    process does with each chart, and what the training process does when drawing inline."""
    from matplotlib.figure import Figure

    from recipe_callbacks.core.pictures import figure_to_image

    made = build(*args, **(kwargs or {}))
    image = figure_to_image(made) if isinstance(made, Figure) else np.ascontiguousarray(made, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{getattr(build, '__name__', build)} drew a picture of shape {image.shape}, not (H, W, 3)")
    return Picture(image, png_bytes(image))


# ----------------------------------------------------------------------------- the pipes
def _send(stream: IO[bytes], data: bytes) -> None:
    """One pickled frame on a pipe: its length, then the pickle."""
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def serve() -> None:
    """The drawing process: draw every chart read from stdin, send ``(id, picture or error)``
    back on the original stdout; anything the libraries print goes to stderr instead."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    source = sys.stdin.buffer
    while True:
        try:
            ticket, build, args, kwargs = _receive(source)
        except EOFError:
            return
        try:
            reply: tuple[int, Picture | None, str] = (ticket, render(build, args, kwargs), "")
        except Exception as err:  # reported to the training process, which warns and goes on
            reply = (ticket, None, "".join(traceback.format_exception_only(type(err), err)).strip())
        _send(out, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


# ----------------------------------------------------------------------------- the training side
def _portable(value: Any) -> Any:
    """``value`` with every tensor in it (in tuples, lists and dicts) detached and on the CPU, so
    that the drawing process can read it (and it no longer changes with training)."""
    if isinstance(value, (tuple, list)):
        return type(value)(_portable(v) for v in value)
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        return value.detach().cpu()
    return value


#: Set when a drawing finished (or the drawing process ended) since the training side last looked:
#: the hooks look at this flag, not at every drawing on its way (a list: read without a call).
FINISHED = [False]


class Drawing:
    """One chart on its way: :meth:`done` says whether it is drawn, :meth:`result` waits for it."""

    def __init__(self, build: Build, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.build, self.args, self.kwargs = build, args, kwargs
        self.picture: Picture | None = None
        self.error = ""
        self._done = threading.Event()

    def finish(self, picture: Picture | None, error: str = "") -> None:
        self.picture, self.error = picture, error
        self.args, self.kwargs = (), {}
        self._done.set()
        FINISHED[0] = True

    def done(self) -> bool:
        return self._done.is_set()

    def draw_here(self) -> None:
        """Draw it in this process (the drawing process could not)."""
        try:
            self.finish(render(self.build, self.args, self.kwargs))
        except Exception as err:
            self.finish(None, f"{type(err).__name__}: {err}")

    def result(self, timeout: float | None = None) -> Picture | None:
        """The picture, waiting up to ``timeout`` seconds; ``None`` when it could not be drawn
        (:attr:`error` says why)."""
        if not self._done.wait(timeout):
            self.finish(None, f"not drawn within {timeout:g} s")
        return self.picture


class Drawer:
    """The drawing process of this training process, started at the first chart.

    Charts go to it through a writer thread (a large chart never blocks the training loop on a
    full pipe) and come back through a reader thread; a chart it cannot take (its arguments do
    not pickle) or will not return (it ended) is drawn in this process.

    Args:
        inline: draw every chart in this process (also when ``RECIPE_DRAWING=inline``).
    """

    def __init__(self, inline: bool | None = None) -> None:
        self.inline = os.environ.get(ENVIRONMENT_VARIABLE, "") == "inline" if inline is None else inline
        self._process: subprocess.Popen[bytes] | None = None
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._waiting: dict[int, Drawing] = {}
        self._next = 0
        self._ended = False
        self._lock = threading.Lock()

    def submit(self, build: Build, *args: Any, **kwargs: Any) -> Drawing:
        """Send one chart to be drawn; returns at once (drawn inline when there is no process)."""
        args, kwargs = _portable(args), _portable(kwargs)
        drawing = Drawing(build, args, kwargs)
        if self.inline or not self._running():
            drawing.draw_here()
            return drawing
        with self._lock:
            ticket, self._next = self._next, self._next + 1
            self._waiting[ticket] = drawing
        try:
            message = pickle.dumps((ticket, build, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # e.g. a closure as an argument: draw it here
            with self._lock:
                self._waiting.pop(ticket, None)
            drawing.draw_here()
            return drawing
        self._outbox.put(message)
        return drawing

    def start(self) -> None:
        """Start the drawing process now (it takes a second or two to import matplotlib), unless
        drawing inline."""
        if not self.inline:
            self._running()

    def orphans(self) -> list[Drawing]:
        """The drawings the drawing process took and will not return (it ended): to draw here."""
        if not self._ended:
            return []
        with self._lock:
            lost, self._waiting = list(self._waiting.values()), {}
        return lost

    def _running(self) -> bool:
        if self._process is not None:
            return not self._ended
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(_PACKAGE_DIR)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True,
                start_new_session=True,  # a Ctrl-C meant for training does not kill it: it ends with its pipe
            )
        except OSError:
            self.inline = True
            return False
        for target, name in ((self._write, "recipe-drawing-out"), (self._read, "recipe-drawing-in")):
            threading.Thread(target=target, args=(self._process,), name=name, daemon=True).start()
        atexit.register(self.stop)
        return True

    def _write(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None
        try:
            while (message := self._outbox.get()) is not None:
                _send(process.stdin, message)
        except OSError:
            self._end()
        finally:
            with contextlib.suppress(OSError):
                process.stdin.close()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        """Hand every picture that comes back to its drawing, until the process ends."""
        assert process.stdout is not None
        try:
            while True:
                ticket, picture, error = _receive(process.stdout)
                with self._lock:
                    drawing = self._waiting.pop(ticket, None)
                if drawing is not None:
                    drawing.finish(picture, error)
        except (EOFError, OSError, pickle.UnpicklingError):
            self._end()

    def _end(self) -> None:
        self._ended = True
        self.inline = True
        FINISHED[0] = True  # what it still had is drawn here, at the next look

    def stop(self) -> None:
        """End the drawing process (at exit); what it still had is drawn here when asked for."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        self._outbox.put(None)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
