"""Write the comparison report: ``recipes/report`` does the work (see its modules).

    python recipes/compare.py --results results/runs/default --out results/REPORT.md \
        --bench results/bench.json
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `recipes` and `freeze_policies` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipes.report.cli import main

if __name__ == "__main__":
    main()
