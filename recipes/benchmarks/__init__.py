"""The cost benchmarks behind ``recipes/bench.py NAME``: one module each (``step_costs``,
``freeze_modes``, ``cache``, ``padding``, ``precision``, ``ddp``) on one harness (``harness``).
Their tables are rendered by ``recipes.report.benches``, which the report shares."""
