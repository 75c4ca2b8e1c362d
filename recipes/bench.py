"""The cost benchmarks, one command: ``python recipes/bench.py NAME [flags]``.

    python recipes/bench.py steps --out results/bench.json   # every method's step, interleaved
    python recipes/bench.py freeze_modes --out ...            # requires_grad, zero_lr, zero_grad
    python recipes/bench.py cache --out ...                   # the frozen-prefix cache
    python recipes/bench.py padding --out ...                 # length-grouped batches
    python recipes/bench.py precision --out ...               # bfloat16 frozen weights
    accelerate launch --config_file configs/accelerate/ddp_cpu.yaml \
        recipes/bench.py ddp --out ...                        # a schedule under DDP
    python recipes/bench.py fsdp2_memory --out ...            # LISA's per-rank memory, FSDP2

Each benchmark is a module of ``recipes/benchmarks/`` sharing ``harness.py`` (flags, model,
batches, timing, atomic JSON); ``python recipes/bench.py NAME --help`` lists its flags.
"""

import importlib
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `recipes` and `freeze_policies` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BENCHMARKS = ("steps", "freeze_modes", "cache", "padding", "precision", "ddp", "fsdp2_memory",
              "adaptive")
MODULES = {"steps": "step_costs"}


def cli(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS:
        given = repr(argv[0]) if argv else "nothing"
        raise SystemExit(f"error: benchmark {given}; choose one of: {', '.join(BENCHMARKS)}")
    name, *rest = argv
    module = importlib.import_module(f"recipes.benchmarks.{MODULES.get(name, name)}")
    return module.main(rest)


if __name__ == "__main__":
    cli()
