"""What ``recipes/run.py`` does: arguments (``arguments``, ``parsing``), building the data, model
and trainer (``build``, ``models``, ``peft_methods``, ``seq2seq``, ``metrics``), the output
folder before a run (``run_dir``) and what is saved after it (``outputs``, ``model_card``);
``main`` runs one job. ``tasks`` is the table of ``--task`` values (everything that differs by
task, in one entry each); ``results`` is the schema of ``results.json`` (written by ``main``,
read by the sweep, the report, the model card and the benchmarks). ``common`` holds what the
recipes share (errors, atomic JSON)."""
