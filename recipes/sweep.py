"""Run one comparison cell: choose its learning rate on short runs, then train the seeds in full.

    python recipes/sweep.py configs/experiments/default.yaml --cell tweets/minilm/bottom_n
    python recipes/sweep.py configs/experiments/default.yaml --list

The work is in ``recipes/experiments/sweep.py``.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `recipes` and `freeze_policies` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipes.experiments.sweep import cli  # noqa: E402
from recipes.launcher.common import ConfigError  # noqa: E402

if __name__ == "__main__":
    try:
        cli()
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
