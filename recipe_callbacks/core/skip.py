"""The one way a check says it cannot run: raise :class:`CheckSkipped`.

Core functions and callbacks raise it wherever they find that the model, the batch or the run
does not let them judge; the callback base class catches it once, where Lightning calls a hook,
and turns it into the ``skip`` Finding that names the argument to set. Nothing here imports
Lightning.
"""

from __future__ import annotations


class CheckSkipped(Exception):
    """The check cannot judge this model, batch or run.

    Args:
        reason: what was seen, for the ``skip`` Finding's summary.
        argument: the constructor argument that would let the check run (``""`` when none would);
            the Finding's advice says ``set Check(argument=...)``.
        key: which of the callback's Findings the skip replaces (``""``: its main one).

    Example:
        >>> err = CheckSkipped("the model returned no tensor", "forward_fn")
        >>> err.reason, err.argument, err.key
        ('the model returned no tensor', 'forward_fn', '')
    """

    def __init__(self, reason: str, argument: str = "", *, key: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.argument = argument
        self.key = key
