"""One launcher for full fine-tuning, every freeze policy and the PEFT baselines.

    accelerate launch recipes/run.py --config configs/tweets/minilm/bottom_n.yaml [--field value]
    python recipes/run.py --config ... [--field value]

The work is in ``recipes/launcher/`` (``main.py`` runs one job; see its docstring for the flags
and what a run leaves in ``output_dir``).
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `recipes` and `freeze_policies` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipes.launcher.main import cli, main  # noqa: E402
from recipes.launcher.parsing import parse_args  # noqa: E402

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    cli()
