"""``python -m recipe_callbacks``: the ``recipe-callbacks`` command (``report`` and ``compare``)."""

from recipe_callbacks.plumbing.command_line import main

if __name__ == "__main__":
    raise SystemExit(main())
