"""Rerun a finished cell's full-length runs with some flags changed (a variant of the cell).

    python recipes/rerun.py results/runs/default tweets/minilm/bottom_n --out DIR -- --bf16 true

The work is in ``recipes/experiments/rerun.py``.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `recipes` and `freeze_policies` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipes.experiments.rerun import cli  # noqa: E402
from recipes.launcher.common import ConfigError  # noqa: E402

if __name__ == "__main__":
    try:
        raise SystemExit(1 if cli() else 0)
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
