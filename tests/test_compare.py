"""The comparison report, fed by recipes/sweep.py itself (its training replaced by a stub that
writes results.json files): layout, grid extension, paired statistics, columns, costs, refusals,
atomic writes."""

import json
import math
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recipes.experiments import sweep
from recipes.launcher.results import MethodSpec, RunResults
from recipes.report import aggregate, columns, markdown, pricing
from recipes.report.aggregate import ReportError
from recipes.report.cli import write_report
from recipes.report.reading import load_results

ROOT = Path(__file__).resolve().parent.parent
TOTAL = 1_000_000
SEEDS = (0, 1, 2)
FULL_STEPS, SHORT_STEPS, EVERY = 30, 10, 5

METHODS = {
    "tweets/minilm/full": {"method": "full", "trainable_params": TOTAL},
    "tweets/minilm/bottom_n": {"method": "freeze", "policy": "bottom_n",
                               "policy_options": {"n": 4}, "freeze_mode": "requires_grad",
                               "trainable_params": 160_000},
    "tweets/minilm/lora": {"method": "peft", "peft_method": "lora",
                           "peft_options": {"r": 8, "target_modules": ["query", "value"]},
                           "trainable_params": 10_000},
    "tweets/minilm/auto_freeze": {"method": "freeze", "policy": "auto_freeze",
                                  "policy_options": {"every": 10},
                                  "freeze_mode": "requires_grad", "trainable_params": TOTAL},
    "tweets/smollm2/full": {"method": "full", "model": "smollm2", "trainable_params": TOTAL},
    "tweets/smollm2/lora": {"method": "peft", "peft_method": "lora", "model": "smollm2",
                            "peft_options": {"r": 8}, "trainable_params": 5_000},
}
# Validation peaks: full inside its grid; lora above its grid (extended upwards, then interior);
# bottom_n far below (extended down until the extension limit); SmolLM2's lora far above (extended
# until the next rate would leave the bounds).
PEAKS = {"tweets/minilm/full": 1e-4, "tweets/minilm/bottom_n": 1e-6, "tweets/minilm/lora": 5e-3,
         "tweets/minilm/auto_freeze": 1e-4, "tweets/smollm2/full": 3e-5,
         "tweets/smollm2/lora": 1e-1}
# Test accuracy per seed at the chosen rate. Against full (0.72, 0.73, 0.75):
#   bottom_n: differences -0.02, +0.01, -0.03 -> indistinguishable (hand-computed below)
#   lora:     differences +0.05, +0.06, +0.07 -> better (interval [+0.0352, +0.0848])
#   auto_freeze: -0.10, -0.12, -0.11 -> worse
TEST = {
    "tweets/minilm/full": (0.72, 0.73, 0.75),
    "tweets/minilm/bottom_n": (0.70, 0.74, 0.72),
    "tweets/minilm/lora": (0.77, 0.79, 0.82),
    "tweets/minilm/auto_freeze": (0.62, 0.61, 0.64),
    "tweets/smollm2/full": (0.60, 0.62, 0.64),
    "tweets/smollm2/lora": (0.61, 0.60, 0.66),
}
ENVIRONMENT = {
    "hardware": {"platform": "Linux-test", "cpu_count": 2, "torch_threads": 1},
    "versions": {"torch": "2.13.0", "transformers": "5.24.0"},
    "python": "3.11.2",
}


def validation(cell: str, lr: float) -> float:
    return 0.8 - 0.02 * (math.log10(lr) - math.log10(PEAKS[cell])) ** 2


def parse(argv: list[str]) -> dict:
    return {argv[i][2:]: argv[i + 1] for i in range(0, len(argv), 2)}


def fake_run(argv: list[str]) -> dict:
    """What recipes/run.py writes, with made-up numbers: a full-length run evaluates on test,
    a curve run evaluates every EVERY steps, a cached run counts hits and records."""
    args = parse(argv)
    cell = args["config"].removeprefix("configs/").removesuffix(".yaml")
    lr, seed = float(args["learning_rate"]), int(args["seed"])
    short = args.get("do_predict") == "False"
    steps = SHORT_STEPS if short else FULL_STEPS
    spec = METHODS[cell]
    score = validation(cell, lr) if short or seed == 0 else 0.5
    log = []
    if spec.get("policy") == "auto_freeze":  # depth 1 at step 10, 2 at step 20
        log += [{"freeze_stage": 0, "trainable_params": TOTAL, "step": 0},
                {"step": 10, "auto_freeze_depth": 1, "auto_freeze_rates": {"0": 0.01}},
                {"freeze_stage": 1, "trainable_params": 600_000, "step": 10},
                {"step": 20, "auto_freeze_depth": 2, "auto_freeze_rates": {"1": 0.01}},
                {"freeze_stage": 2, "trainable_params": 400_000, "step": 20}]
    if args.get("eval_strategy") == "steps":
        for step in range(EVERY, steps + 1, EVERY):
            log.append({"eval_accuracy": score - 0.1 * (1 - step / steps), "eval_runtime": 1.0,
                        "step": step})
    runtime = {"full": 60.0, "freeze": 30.0, "peft": 45.0}[spec["method"]] * steps / FULL_STEPS
    log += [{"train_runtime": runtime, "step": steps}, {"eval_accuracy": score, "step": steps}]
    results = {
        "method": spec["method"], "policy": spec.get("policy"),
        "policy_options": spec.get("policy_options", {}),
        "freeze_mode": spec.get("freeze_mode"), "peft_method": spec.get("peft_method"),
        "peft_options": spec.get("peft_options", {}),
        "command": shlex.join(["recipes/run.py", *argv]),
        "model": spec.get("model", "minilm"), "task": "classification", "dataset": "tweets",
        "seed": seed, "learning_rate": lr, "max_steps": steps,
        "trainable_params": spec["trainable_params"], "total_params": TOTAL,
        "eval_accuracy": score, "eval_f1": score - 0.05, "train_runtime": runtime,
        "peak_memory_bytes": 2**30, "peak_memory_kind": "cpu_max_rss",
        "optimizer_state_bytes": 8 * spec["trainable_params"],
        "frozen_audit": {"passed": True, "checked": 10} if spec["method"] == "freeze" else None,
        "prefix_cache": ({"hits": 20, "records": 10, "rebuilds": 0, "record_seconds": 4.0}
                         if cell == "tweets/minilm/bottom_n" and not short else None),
        "log_history": log, **ENVIRONMENT,
    }
    if results["model"] == "minilm":  # smollm2's runs stand for runs that predate split digests
        results["data"] = SPLITS
    if not short:
        accuracy = TEST[cell][SEEDS.index(seed)]
        results.update(test_accuracy=accuracy, test_f1=accuracy - 0.1)
    folder = Path(args["output_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))
    return results


SPLITS = {"train": {"rows": 1500, "sha256": "a1"}, "validation": {"rows": 500, "sha256": "b2"},
          "test": {"rows": 2000, "sha256": "c3"}}
PROFILE = {
    "seeds": list(SEEDS),
    "lrs": {"default": [3e-5, 1e-4, 3e-4], "adapter": [3e-4, 1e-3, 3e-3]},
    "grid_extension": {"max_extensions": 2, "bounds": [1e-8, 1e-2]},
    "sweep": {"num_train_epochs": 1},
    "common": {"num_train_epochs": 3},
    "cells": {
        "tweets/minilm/full": {"curve_fields": {"eval_strategy": "steps", "eval_steps": EVERY}},
        "tweets/minilm/bottom_n": {"fields": {"cache_frozen_prefix": True},
                                   "curve_fields": {"eval_strategy": "steps"}},
        "tweets/minilm/lora": {"lr_grid": "adapter", "curve_fields": {"eval_strategy": "steps"}},
        "tweets/minilm/auto_freeze": {"curve_fields": {"eval_strategy": "steps"}},
        "tweets/smollm2/full": {"lrs": [3e-5, 1e-4]},
        "tweets/smollm2/lora": {"lrs": [3e-4, 1e-3]},
    },
}
BENCH = {
    "model": "minilm",
    "methods": [
        {"label": "full", "method": "full", "policy": None, "policy_options": {},
         "freeze_mode": None, "peft_method": None, "step_ratio": 1.0, "flop_ratio": 1.0,
         "trainable_params": TOTAL, "total_params": TOTAL, "optimizer_state_bytes": 8 * TOTAL},
        {"label": "bottom_n (n=4)", "method": "freeze", "policy": "bottom_n",
         "policy_options": {"n": 4}, "freeze_mode": "requires_grad", "peft_method": None,
         "step_ratio": 0.5, "flop_ratio": 0.56, "trainable_params": 400_000,
         "total_params": TOTAL},
        {"label": "all_but_head", "method": "freeze", "policy": "all_but_head",
         "policy_options": {}, "freeze_mode": "requires_grad", "peft_method": None,
         "step_ratio": 0.3, "flop_ratio": 0.34, "trainable_params": 100_000,
         "total_params": TOTAL},
        {"label": "lora", "method": "peft", "policy": None, "policy_options": {},
         "freeze_mode": None, "peft_method": "lora", "step_ratio": 0.7, "flop_ratio": 0.7,
         "trainable_params": 10_000, "total_params": TOTAL},
        {"label": "FreezeTrainer bottom_n (n=4)", "method": "freeze", "policy": "bottom_n",
         "policy_options": {"n": 4}, "freeze_mode": "requires_grad", "peft_method": None,
         "step_ratio": 0.9, "flop_ratio": 0.56},
    ],
    "targets": {"bottom_n_4_faster_than_lora": {"value": 0.71, "threshold": "< 1",
                                                "passed": True}},
    **ENVIRONMENT,
}
BENCH_CACHE = {
    "command": "python recipes/bench.py cache", "model": "MiniLM", "batch_size": 32,
    "seq_len": 64, "batches_per_epoch": 6, "epochs": 3,
    "methods": {
        "full": {"ratio_to_full": 1.0, "first_epoch_ratio_to_full": 1.0, "cache_bytes": 0},
        "bottom_n (n=4)": {"ratio_to_full": 0.5, "first_epoch_ratio_to_full": 0.5,
                           "cache_bytes": 0},
        "bottom_n (n=4) cached": {"ratio_to_full": 0.2, "first_epoch_ratio_to_full": 0.6,
                                  "cache_bytes": 2**20},
    },
    "targets": {"bottom_n_cached_vs_full": {"value": 0.2, "threshold": "<= 0.35",
                                            "passed": True}},
}

MIB = 2**20
BENCH_PRECISION = {
    "command": "python recipes/bench.py precision", "model": "smollm2",
    "policy": {"name": "bottom_n", "n": 24}, "batch_size": 8, "seq_len": 64, "device": "cpu",
    "variants": [
        {"variant": variant, "parameter_bytes": params * MIB, "gradient_bytes": 10 * MIB,
         "optimizer_state_bytes": 20 * MIB, "saved_for_backward_bytes": 30 * MIB,
         "accounted_bytes": (params + 60) * MIB, "peak_rss_bytes": 900 * MIB,
         "cuda_max_memory_allocated": None, "frozen_audit_passed": True}
        for variant, params in (("fp32_frozen", 500), ("bf16_frozen", 260))
    ],
    "targets": {"accounted_memory_ratio": {"value": 320 / 560, "threshold": "<= 0.75",
                                           "passed": True}},
}


def run_comparison(root: Path, monkeypatch, cells=None) -> Path:
    """recipes/sweep.py over PROFILE's cells (from the repository root, where configs live)."""
    profile = root.parent / "profile.yaml"
    profile.write_text(yaml.safe_dump(PROFILE))
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sweep, "main", fake_run)
    for cell in cells or PROFILE["cells"]:
        sweep.run_cell(str(profile), cell, str(root))
    return root


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    try:
        root = run_comparison(tmp_path_factory.mktemp("cmp") / "runs", monkeypatch)
    finally:
        monkeypatch.undo()
    bench_dir = root.parent / "bench"
    bench_dir.mkdir()
    (bench_dir / "bench.json").write_text(json.dumps(BENCH))
    (bench_dir / "bench_cache.json").write_text(json.dumps(BENCH_CACHE))
    (bench_dir / "bench_precision.json").write_text(json.dumps(BENCH_PRECISION))
    return root


@pytest.fixture
def runs(comparison, tmp_path):
    """A private copy to spoil."""
    return Path(shutil.copytree(comparison, tmp_path / "runs"))


def tables_by_model(root: Path, bench: dict | None = BENCH, cache: dict | None = BENCH_CACHE):
    results = load_results(root)
    for table in results.tables:
        pricing.price_table(table, bench, cache)
    return {table.model: {cell.short: cell for cell in table.cells} for table in
            results.tables}, results


# -- layout and learning-rate selection ------------------------------------------------------


def test_full_length_runs_are_reported_and_short_runs_only_choose_the_rate(comparison):
    cells, results = tables_by_model(comparison)
    full = cells["minilm"]["full"]
    assert [run.seed for run in full.runs] == [0, 1, 2]
    assert all(run.max_steps == FULL_STEPS for run in full.runs)
    assert {run.max_steps for run in full.selection.sweep_runs.values()} == {SHORT_STEPS}
    assert full.chosen_lr == 1e-4 and full.selection.interior
    assert full.test("test_accuracy").mean == pytest.approx(0.7333333)
    assert len(results.runs) == 18 and results.incomplete == []


def test_grid_extension_is_reported_with_every_score_and_why_the_search_stopped(comparison):
    cells, _ = tables_by_model(comparison)
    lora = cells["minilm"]["lora"].selection  # best at the top edge: 9.49e-3 added, worse
    assert lora.grid == [3e-4, 1e-3, 3e-3]
    assert lora.added == [pytest.approx(9.49e-3)]
    assert lora.chosen_lr == 3e-3 and lora.interior
    assert lora.stopped == "interior" and lora.extensions == 1
    bottom = cells["minilm"]["bottom_n"].selection  # best below the grid, limit of 2 added
    assert bottom.stopped == "max_extensions" and not bottom.interior
    assert bottom.chosen_lr == min(bottom.rates) == pytest.approx(3e-6)
    smol = cells["smollm2"]["lora"].selection  # 3.33e-3 added; 1.11e-2 would pass 1e-2
    assert (smol.stopped, smol.extensions, smol.chosen_lr) == ("bounds", 1, pytest.approx(3.33e-3))

    context = columns.context_of(next(t for t in load_results(comparison).tables
                                       if t.model == "minilm"))
    text = columns.render(columns.SELECTION_COLUMNS, context.table.cells, context)
    row = next(line for line in text.splitlines() if line.startswith("| lora |"))
    # 0.8 - 0.02 * log10(lr / 5e-3) ** 2, in percent
    assert "| 0.0003: 77.01, 0.001: 79.02, **0.003: 79.90**, 0.00949: 79.85† |" in row
    assert row.endswith("| interior (1 added) | num_train_epochs=1 (10 steps), seed 0 |")
    row = next(line for line in text.splitlines() if line.startswith("| bottom_n (n=4) |"))
    assert "at the bottom edge: extension limit reached (2 added)" in row


# -- statistics --------------------------------------------------------------------------------


def test_paired_differences_against_full_match_the_hand_computed_interval(comparison):
    """bottom_n - full per seed: -0.02, +0.01, -0.03. Mean -0.04/3 = -0.013333; deviations
    -0.006667, +0.023333, -0.016667; squares sum 8.6667e-4; s = sqrt(8.6667e-4 / 2) = 0.020817;
    s / sqrt(3) = 0.012019; t(0.975, 2) = 4.302653; half-width 0.051712:
    [-0.065045, +0.038378], which includes zero."""
    results = load_results(comparison)
    table = next(t for t in results.tables if t.model == "minilm")
    diffs = columns.differences(table, "test_accuracy")
    bottom = diffs["bottom_n (n=4)"]
    assert bottom.seeds == (0, 1, 2)
    assert bottom.differences == pytest.approx((-0.02, 0.01, -0.03))
    assert bottom.mean == pytest.approx(-0.0133333, abs=1e-6)
    assert bottom.std == pytest.approx(0.0208167, abs=1e-6)
    assert (bottom.low, bottom.high) == (pytest.approx(-0.065045, abs=1e-6),
                                         pytest.approx(0.038378, abs=1e-6))
    assert not bottom.excludes_zero
    lora = diffs["lora"]  # +0.05, +0.06, +0.07: s = 0.01, half = 4.302653 * 0.01 / sqrt(3)
    assert (lora.low, lora.high) == (pytest.approx(0.06 - 0.0248414, abs=1e-6),
                                     pytest.approx(0.06 + 0.0248414, abs=1e-6))
    assert columns.verdict_of(lora, True) == "better than full"
    assert columns.verdict_of(diffs["auto_freeze (every=10)"], True) == "worse than full"
    assert columns.verdict_of(bottom, True) == "indistinguishable"


def test_findings_state_a_difference_only_where_the_interval_excludes_zero(comparison):
    cells, results = tables_by_model(comparison)
    lines = markdown.findings(results, BENCH)
    title = "minilm on tweets (classification)"
    lora = next(line for line in lines if line.startswith(f"{title}: lora is better"))
    # differences 5, 6, 7 points: sd 1, t(0.975, 2) = 4.303; Bonferroni over the 3 methods
    # compared: t(1 - 0.05/6, 2) = 7.649, half-width 4.42
    assert lora.startswith(f"{title}: lora is better than full fine-tuning on test accuracy: "
                           "+6.00 points, 95% CI [+3.52, +8.48] over 3 paired seeds; with the 3 "
                           "methods compared at once (Bonferroni, 98.33% each) the interval is "
                           "[+1.58, +10.42]: it still excludes zero.")
    assert any(line.startswith(f"{title}: auto_freeze (every=10) is worse than full") for line
               in lines)
    assert (f"{title}: indistinguishable from full fine-tuning (73.33 ± 1.53) on test accuracy "
            "at this budget (the 95% interval of the paired difference includes zero): "
            "bottom_n (n=4).") in lines
    assert not any("bottom_n (n=4) is" in line for line in lines)
    smol = [line for line in lines if line.startswith("smollm2")]
    assert any("indistinguishable" in line and "lora" in line for line in smol)


def test_pareto_fronts_of_accuracy_against_share_and_priced_step(comparison):
    cells, results = tables_by_model(comparison)
    table = next(t for t in results.tables if t.model == "minilm")
    share = markdown.pareto_cells(table, lambda c: c.trainable_share)
    # lora is the smallest and the most accurate: it dominates everything
    assert [c.short for c in share] == ["lora"]
    lines = markdown.findings(results, BENCH)
    assert ("minilm on tweets (classification): Pareto front of test accuracy (mean) against "
            "priced step time, cheapest first: bottom_n (n=4), lora.") in lines


def test_full_fine_tuning_curve_and_plateau_are_stated_from_the_numbers(comparison):
    cells, results = tables_by_model(comparison)
    table = next(t for t in results.tables if t.model == "minilm")
    lines = markdown.curve_markdown(table)
    assert lines[0] == "| step | 5 | 10 | 15 | 20 | 25 | 30 |"
    # 0.8 - 0.1 * (1 - step / 30): the last third (25, 30) averages 79.17, the middle (15, 20)
    # 75.83: gain +3.33 points, over the 1-point threshold
    assert "is still improving: the mean of the last third of its 6 evaluations is 79.17, " \
           "the middle third's 75.83 (gain +3.33 points" in lines[4]


# -- costs ------------------------------------------------------------------------------------


def test_costs_are_priced_from_the_bench_and_the_cache_share_from_hits_and_records(comparison):
    cells, _ = tables_by_model(comparison)
    minilm = cells["minilm"]
    assert (minilm["lora"].priced_ratio, minilm["lora"].priced_source) == (0.7, "bench")
    bottom = minilm["bottom_n"]
    # 10 recording steps at 0.6, 20 replaying at 0.2 over 30 steps
    assert bottom.priced_ratio == pytest.approx((10 * 0.6 + 20 * 0.2) / 30)
    assert bottom.priced_source == "bench_cache" and bottom.step_ratio == 0.5
    # cache saves 20 * (0.5 - 0.2) - 10 * (0.6 - 0.5) = 5 full steps; freezing 30 * 0.5 = 15
    assert bottom.cache_share == pytest.approx(5 / 20)
    auto = minilm["auto_freeze"]  # 10 steps at 1.0, 10 at 600k trainable, 10 at 400k (=0.5)
    between = 0.5 + 0.5 * (600_000 - 400_000) / (TOTAL - 400_000)
    assert auto.priced_source == "bench, by stage"
    assert auto.priced_ratio == pytest.approx((10 * 1.0 + 10 * between + 10 * 0.5) / 30)
    assert auto.trainable_share == pytest.approx((TOTAL + 600_000 + 400_000) / 3 / TOTAL)
    table = load_results(comparison).tables[0]
    pricing.price_table(table, BENCH, BENCH_CACHE)
    full = table.full  # training time less in-training evaluation (6 x 1 s in seed 0's run)
    assert pricing.seconds_per_full_step(table) == pytest.approx((54 / 30 + 2 + 2) / 3)
    unit = pricing.seconds_per_full_step(table)
    lora = next(c for c in table.cells if c.short == "lora")
    run = lora.curve_run
    assert pricing.cumulative_seconds(table, lora, run, [10, 30]) == pytest.approx(
        [10 * 0.7 * unit, 30 * 0.7 * unit])
    assert full.curve_run.seed == 0
    smol, _ = tables_by_model(comparison)
    assert smol["smollm2"]["lora"].priced_source == "runs"  # the bench ran MiniLM only


# -- the report -------------------------------------------------------------------------------


def header(text: str, first: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {first} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_columns_rows_and_sections(comparison, tmp_path):
    out = tmp_path / "report" / "REPORT.md"
    bench = comparison.parent / "bench" / "bench.json"
    write_report(comparison, out, bench, "python recipes/compare.py --results runs")
    text = out.read_text()
    table = next(t for t in load_results(comparison).tables if t.model == "minilm")
    declared = [c.title for c in columns.result_columns(table)]
    assert header(text, "method")[: len(declared)] == declared == [
        "method", "trainable (%)", "test accuracy (%)", "macro-F1 (%)",
        "test accuracy − full points, mean [95% CI]", "macro-F1 − full points [CI]",
        "paired seeds", "vs full", "lr", "frozen audit"]
    assert ("| lora | 1 | 79.33 ± 2.52 | 69.33 ± 2.52 | +6.00 [+3.52, +8.48] | "
            "+6.00 [+3.52, +8.48] | 3 | better than full | 0.003 | n/a |") in text
    assert "| full | 100 | 73.33 ± 1.53 | 63.33 ± 1.53 | — | — | 3 | reference | 0.0001 |" in text
    assert [c.title for c in columns.COST_COLUMNS] == [
        "method", "trainable (%)", "step time vs full (bench)",
        "priced step vs full (source); priced run", "training time per run (s, under load)",
        "peak memory", "optimizer state", "prefix cache per run (mean)"]
    assert ("| bottom_n (n=4) | 16 | 0.50 | 0.33 (bench_cache); 19 s | 28 ± 3 (30 steps) | "
            "1.0 GiB (RSS) | 1.2 MiB | 20 replayed / 10 recorded, 0.0 rebuilds, 4 s recording; "
            "25% of the time saved |") in text
    assert "| auto_freeze (every=10) | 66.7 (mean over steps; 100 at start) |" in text
    assert "| auto_freeze (every=10) | 0 | 2 | 2 | 1 @ 10, 2 @ 20 |" in text
    assert "1 torch thread(s) each on a machine shared with other work" in text
    assert "no method is ranked by wall time" in text
    assert "## smollm2 on tweets (classification)" in text
    assert ("Splits, the same in every run: test 2,000 rows (sha256 `c3`), train 1,500 rows "
            "(sha256 `a1`), validation 500 rows (sha256 `b2`).") in text
    assert "Splits: the runs record no digest of their splits (they predate it)" in text
    assert "## Cost benchmark" in text and "## Frozen-prefix cache" in text
    assert ("## Frozen weights in bfloat16 (memory)\n\n`python recipes/bench.py precision`: "
            "smollm2, bottom_n (n=24), batch 8 x 64 tokens, bf16 autocast, device cpu.") in text
    assert "| bf16_frozen | 260.0 | 10.0 | 20.0 | 30.0 | 320.0 | 900.0 | - | True |" in text
    assert "accounted_memory_ratio: 0.571 (target <= 0.75: passed)" in text
    for name in ("pareto.png", "time_to_accuracy.png", "validation_curves.png", "memory.png"):
        data = (out.parent / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
        assert f"]({name})" in text
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


def test_labels_on_the_pareto_plot_do_not_overlap(comparison):
    from recipes.report import plots

    _, results = tables_by_model(comparison)
    fig = plots.plot_pareto(results.tables)
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(boxes) == len(results.tables[0].cells) or len(boxes) == 2
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), (ax.get_title(), a, b)
        assert ax.get_xlabel() and ax.get_ylabel()
    assert fig.axes[0].get_xscale() == "log" and "log scale" in fig.axes[0].get_xlabel()
    plots.pyplot().close("all")


def test_incomplete_cells_are_listed_and_left_out(runs, monkeypatch):
    (runs / "tweets/minilm/lora/selection.json").unlink()
    results = load_results(runs)
    assert results.incomplete == ["tweets/minilm/lora"]
    assert "lora" not in {c.short for t in results.tables for c in t.cells if t.model == "minilm"}


# -- refusals and atomic writes ---------------------------------------------------------------


def refuse(root: Path, pattern: str):
    with pytest.raises(ReportError, match=pattern) as error:
        load_results(root)
    assert "\n" not in str(error.value)


def spoil(path: Path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_malformed_inputs_are_refused_in_one_line_naming_the_file(runs):
    cell = runs / "tweets/minilm/full"
    bad = cell / "lr0.0001-seed1" / "results.json"
    original = bad.read_text()
    bad.write_text('{"method": "full", ')
    refuse(runs, re.escape(f"{bad}: not a readable JSON file"))
    bad.write_text(original)
    spoil(bad, test_f1=None)
    refuse(runs, re.escape(f"{bad}: no numeric test_f1"))
    bad.write_text(original)

    selection = cell / "selection.json"
    saved = selection.read_text()
    spoil(selection, chosen_lr=3e-4)
    refuse(runs, re.escape(f"{selection}: chosen_lr 0.0003 is not the best validation score"))
    selection.write_text(saved)
    spoil(selection, stopped="tired")
    refuse(runs, re.escape(f"{selection}: stopped is 'tired'; expected one of interior, "
                           "max_extensions, bounds"))
    selection.write_text(saved)
    short = cell / "sweep" / "lr3e-05-seed0" / "results.json"
    spoil(short, eval_accuracy=0.1)
    refuse(runs, re.escape(f"{short}: validation score 0.1 but {selection} records"))
    short.unlink()
    refuse(runs, re.escape(f"{selection}: no short run (sweep/lr<rate>-seed0/results.json) "
                           "for lr 3e-05"))
    selection.write_text(saved)


def test_stale_and_missing_full_length_runs_are_refused(runs):
    cell = runs / "tweets/minilm/full"
    stale = cell / "lr3e-05-seed1"
    shutil.copytree(cell / "lr0.0001-seed1", stale)
    spoil(stale / "results.json", learning_rate=3e-5)
    refuse(runs, re.escape(f"{stale / 'results.json'}: lr 3e-05 but {cell / 'selection.json'} "
                           "chose 0.0001; a stale run? remove it"))
    shutil.rmtree(stale)
    shutil.rmtree(cell / "lr0.0001-seed2")
    refuse(runs, re.escape(f"{cell / 'selection.json'}: seeds [0, 1, 2] but full-length runs "
                           "for [0, 1]"))
    refuse(runs.parent / "nothing-here", "no such folder of runs")


def test_runs_that_saw_different_splits_are_refused(runs):
    """A run reused across a change in how splits are drawn is not compared with fresh ones."""
    stale = runs / "tweets/minilm/lora/lr0.003-seed2/results.json"
    spoil(stale, data={**SPLITS, "test": {"rows": 2000, "sha256": "old"}})
    refuse(runs, r"cells tweets/minilm/\w+ and tweets/minilm/lora saw different test splits "
                 r"\(\{'rows': 2000, 'sha256': 'c3'\} against \{'rows': 2000, 'sha256': 'old'\}\)")
    spoil(stale, data=None)
    refuse(runs, r"cell tweets/minilm/lora has runs that record no split digest \(`data`\) where "
                 r"cell tweets/minilm/\w+ does: rerun it on the current splits")
    spoil(stale, data=SPLITS)
    assert load_results(runs).tables[0].data == SPLITS


def test_a_bad_input_leaves_the_previous_report_and_plots(runs, tmp_path):
    out = tmp_path / "out" / "REPORT.md"
    out.parent.mkdir()
    out.write_text("previous report")
    (runs / "tweets/minilm/full/lr0.0001-seed2/results.json").write_text("[]")
    with pytest.raises(ReportError, match="not a JSON object"):
        write_report(runs, out, None, "cmd")
    assert sorted(p.name for p in out.parent.iterdir()) == ["REPORT.md"]
    assert out.read_text() == "previous report"


def test_a_failure_while_writing_leaves_no_partial_files(comparison, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from recipes.report import cli, plots

    def two_small_figures(tables):  # what matters is the second write failing
        return {name: plots.pyplot().figure(figsize=(1, 1)) for name in ("a.png", "b.png")}

    monkeypatch.setattr(cli, "make_plots", two_small_figures)
    monkeypatch.setitem(markdown.CAPTIONS, "a.png", "a")
    monkeypatch.setitem(markdown.CAPTIONS, "b.png", "b")
    calls = {"n": 0}
    original = Figure.savefig

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", flaky)
    out = tmp_path / "out" / "REPORT.md"
    with pytest.raises(OSError, match="disk full"):
        write_report(comparison, out, None, "cmd")
    assert list(out.parent.iterdir()) == []


def test_the_command_line_entry_point_refuses_in_one_line(runs, tmp_path):
    bad = runs / "tweets/smollm2/lora/lr0.00333-seed0/results.json"
    spoil(bad, task="translation")
    process = subprocess.run(
        [sys.executable, str(ROOT / "recipes/compare.py"), "--results", str(runs), "--out",
         str(tmp_path / "REPORT.md")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert process.returncode == 1
    assert process.stderr.strip() == (f"error: {bad}: unknown task 'translation' (known: "
                                      "classification, causal_lm, seq2seq, sft)")
    assert not (tmp_path / "REPORT.md").exists()


# -- per-run helpers kept from the flat report ------------------------------------------------


def test_training_seconds_leave_out_evaluation_inside_training():
    run = RunResults("full", "minilm", "classification", 0, 1e-4, train_runtime=30.0,
                     log_history=[
        {"loss": 1.0, "step": 10}, {"eval_runtime": 4.0, "step": 10},
        {"eval_runtime": 5.0, "step": 20}, {"train_runtime": 30.0, "step": 30},
        {"eval_runtime": 6.0, "step": 30},  # the final evaluate(), after training
    ])
    assert aggregate.training_seconds(run) == 21.0


def test_method_labels_and_schedule_timing_does_not_split_bench_matches():
    assert aggregate.method_label(MethodSpec("peft", peft_method="lora")) == "lora"
    run = {"method": "freeze", "policy": "bottom_n", "policy_options": {"n": 4}}
    assert aggregate.method_label(MethodSpec(**run)) == "bottom_n (n=4)"
    assert aggregate.method_label(MethodSpec(**run, freeze_mode="zero_lr")) == (
        "bottom_n (n=4) zero_lr")
    # a whole run is labelled as its method
    assert aggregate.method_label(RunResults(**run, model="m", task="classification", seed=0,
                                             learning_rate=1e-4)) == "bottom_n (n=4)"
    base = {"method": "freeze", "policy": "lisa", "freeze_mode": "requires_grad",
            "peft_method": None}
    assert aggregate.descriptor(MethodSpec(**base, policy_options={"k": 2, "every": 10})) == (
        aggregate.descriptor(MethodSpec(**base, policy_options={"k": 2})))
    assert aggregate.descriptor(MethodSpec(**base, policy_options={"k": 1})) != (
        aggregate.descriptor(MethodSpec(**base, policy_options={"k": 2})))


# -- real files ---------------------------------------------------------------------------------

REAL = ROOT / "tests" / "data" / "report" / "default"  # two cells of the default profile, as
# recipes/sweep.py wrote them (training-loss log entries, layer groups and cost preview removed)


def test_real_cells_paired_interval_and_cache_share_by_hand():
    """Test accuracy, seeds 0, 1, 2: full 0.7385, 0.7435, 0.738; bottom_n 0.737, 0.751, 0.752.
    Differences -0.0015, +0.0075, +0.014: mean 0.0066667, s = 0.0077835, s / sqrt(3) =
    0.0044938, x 4.302653 = 0.019335: [-0.012669, +0.026002]."""
    cache = {"methods": {
        "bottom_n (n=4)": {"ratio_to_full": 0.48, "first_epoch_ratio_to_full": 0.48},
        "bottom_n (n=4) cached": {"ratio_to_full": 0.29, "first_epoch_ratio_to_full": 0.44},
    }}
    bench = {"model": "minilm", "methods": [BENCH["methods"][0]], "targets": {}}
    cells, results = tables_by_model(REAL, bench=bench, cache=cache)
    (table,) = results.tables
    diff = columns.differences(table, "test_accuracy")["bottom_n (n=4)"]
    assert diff.mean == pytest.approx(0.0066667, abs=1e-6)
    assert (diff.low, diff.high) == (pytest.approx(-0.012669, abs=1e-5),
                                     pytest.approx(0.026002, abs=1e-5))
    assert columns.verdict_of(diff, True) == "indistinguishable"
    bottom = cells["minilm"]["bottom_n"]
    assert bottom.selection.stopped == "interior" and bottom.selection.extensions == 2
    # per run 94 replayed and 47 recorded of 141 steps: the cache saves 94 x (0.48 - 0.29) -
    # 47 x (0.44 - 0.48) = 19.74 full steps, freezing 141 x 0.52 = 73.32: a share of 19.74 / 93.06
    assert bottom.cache_share == pytest.approx(19.74 / 93.06)
    assert bottom.priced_ratio == pytest.approx((47 * 0.44 + 94 * 0.29) / 141)
    assert cells["minilm"]["full"].curve_run.seed == 0
    assert len(validation_curve_of(cells["minilm"]["full"])) == 12


def validation_curve_of(cell):
    return aggregate.validation_curve(cell.curve_run, "eval_accuracy")


def test_short_runs_may_set_their_own_options_only_when_the_selection_records_them(runs):
    """A schedule compressed to the short runs' length (gradual_unfreeze: a stage every 5 of 40
    steps) changes their policy_options: the cell still reads when selection.json's sweep_fields
    record those options, and is refused as mixed when they do not."""
    cell = runs / "tweets/minilm/auto_freeze"
    selection = cell / "selection.json"
    shorts = sorted((cell / "sweep").glob("*/results.json"))
    full_length = json.loads(next(cell.glob("lr*-seed0/results.json")).read_text())
    own = {**full_length["policy_options"], "every": 5}
    for short in shorts:
        spoil(short, policy_options=own)
    refuse(runs, re.escape(f"{shorts[0]}: not the same method, model or dataset as "))
    data = json.loads(selection.read_text())
    data["sweep_fields"] = {**data.get("sweep_fields", {}), "policy_options": own}
    selection.write_text(json.dumps(data))
    cells, _ = tables_by_model(runs)
    assert cells["minilm"]["auto_freeze"].selection.chosen_lr == data["chosen_lr"]
    for short in shorts:  # the recorded options excuse policy_options, not the method
        spoil(short, policy="bottom_n")
    refuse(runs, "not the same method, model or dataset as")


# -- what to use when, labels with options, cost bases ----------------------------------------


def test_what_to_use_when_is_read_off_the_paired_intervals(comparison):
    """lora: +6 points [+3.52, +8.48], Bonferroni still excludes zero; bottom_n (n=4): -1.33
    [-6.50, +3.84], no measured loss, the cheapest priced step; auto_freeze: a loss."""
    _, results = tables_by_model(comparison)
    text = "\n".join(markdown.recommendations(results))
    minilm = text.split("**minilm on tweets (classification)**")[1].split("**smollm2")[0]
    assert ("- Scored above full fine-tuning on these seeds: lora (+6.00 points [+3.52, +8.48]). "
            "Corrected for the 3 comparisons at once (Bonferroni), lora still differs.") in minilm
    assert ("- To train fastest without a measured loss: bottom_n (n=4), priced at 0.33 x full "
            "fine-tuning's step time (bench_cache), -1.33 points [-6.50, +3.84] on test "
            "accuracy.") in minilm
    assert "- Measured a loss against full fine-tuning at this budget: auto_freeze (every=10) " \
        "(-11.00 points [-13.48, -8.52])." in minilm
    assert "One task (minilm on tweets (classification), 1,500 training rows), 3 seeds" in minilm
    report = markdown.report_markdown(results, "cmd", BENCH, [], [])
    assert report.index("## What to use when") < report.index("How to read it:")


def test_a_short_run_that_froze_nothing_is_explained():
    """auto_freeze's short runs whose every decision kept depth 0 trained as full fine-tuning
    did: the note says so, and that the scores are full fine-tuning's when they are."""
    from types import SimpleNamespace

    decisions = [{"step": s, "auto_freeze_depth": 0} for s in (20, 30, 40)]
    short = {lr: SimpleNamespace(max_steps=40, log_history=decisions) for lr in (1e-4, 3e-4)}
    scores = {1e-4: 0.59, 3e-4: 0.69}
    full = SimpleNamespace(is_full=True, label="full", selection=SimpleNamespace(
        scores=scores, sweep_runs={lr: SimpleNamespace(max_steps=40, log_history=[])
                                   for lr in scores}))
    auto = SimpleNamespace(is_full=False, label="auto_freeze (every=10)",
                           selection=SimpleNamespace(scores=dict(scores), sweep_runs=short))
    table = SimpleNamespace(full=full, cells=[full, auto])
    notes = markdown.short_run_notes(table)
    assert notes[2] == (
        "- auto_freeze (every=10): its short runs (40 steps) froze nothing: every decision "
        "(steps 20, 30, 40) kept depth 0 (the first decision needs two windows of `every` steps "
        "to compare). Until it freezes, auto_freeze trains exactly what full fine-tuning trains, "
        "so its validation scores equal full fine-tuning's at every rate and its chosen rate is "
        "full fine-tuning's; only the full-length runs tell them apart.")
    short[3e-4].log_history = [*decisions, {"step": 50, "auto_freeze_depth": 1}]
    assert markdown.short_run_notes(table) == []  # it froze: nothing to explain


def test_plot_labels_carry_options_and_every_plot_says_its_cost_basis(comparison):
    from recipes.report import plots

    _, results = tables_by_model(comparison)
    fig = plots.plot_pareto(results.tables)
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert "bottom_n n=4" in texts and "auto_freeze every=10" in texts
    assert "bottom_n" not in texts
    titles = [ax.get_title() for ax in fig.axes]
    assert all("\ncost basis: " in title for title in titles), titles
    assert titles[0].endswith("cost basis: trainable parameters (not time)")
    assert titles[1].endswith("cost basis: step time priced from the interleaved benchmark")
    memory = plots.plot_memory(results.tables)
    assert [t.get_text() for t in memory.axes[0].get_yticklabels()][:1] != ["bottom_n"]
    assert all("cost basis: " in ax.get_title() for ax in memory.axes)
    plots.pyplot().close("all")


# -- the frozen-depth curve (recipes/report/depth.py) -------------------------------------------

DEPTH = ROOT / "tests" / "data" / "report" / "depth"  # a 4-block model: the default profile's
# full, embeddings (n=0) and all_but_head (n=4) in default/; the depth profile's bottom_n_1
# (complete) and bottom_n_3 (one short run, no selection.json) in depth/; nothing at n=2.
# Test accuracy, seeds 0, 1, 2: full 0.70, 0.72, 0.74; embeddings 0.71, 0.72, 0.76;
# bottom_n_1 0.72, 0.73, 0.75; all_but_head 0.60, 0.63, 0.63.


def depth_curve(default: Path = DEPTH / "default", depth: Path = DEPTH / "depth"):
    from recipes.report.depth import build_curve

    return build_curve(depth, load_results(default))


def test_depth_cells_are_placed_by_what_their_runs_trained():
    from recipes.report.depth import frozen_depth

    curve = depth_curve()
    assert curve.blocks == 4 and sorted(curve.points) == [0, 1, 2, 3, 4]
    placed = {n: (p.cell.short if p.cell else p.incomplete, p.root) for n, p in
              curve.points.items()}
    assert placed == {0: ("embeddings", DEPTH / "default"), 1: ("bottom_n_1", DEPTH / "depth"),
                      2: (None, None), 3: ("tweets/minilm/bottom_n_3", None),
                      4: ("all_but_head", DEPTH / "default")}
    full = curve.full.first
    assert frozen_depth(full) is None  # the embeddings train: the reference, not a depth
    one = curve.points[1].cell.first
    assert frozen_depth(one) == (1, 4)
    partial = dataclass_replace(one, groups={**one.groups, "block.2": [50, 100]})
    assert frozen_depth(partial) is None
    gap = dataclass_replace(one, groups={**one.groups, "block.2": [0, 100]})
    assert frozen_depth(gap) is None  # block 2 frozen above a trained block 1: not a prefix
    schedule = dataclass_replace(one, log_history=[
        {"freeze_stage": 0, "trainable_params": 10, "step": 0},
        {"freeze_stage": 1, "trainable_params": 20, "step": 5}, *one.log_history])
    assert frozen_depth(schedule) is None


def dataclass_replace(run, **changes):
    import dataclasses

    return dataclasses.replace(run, **changes)


def test_depth_paired_intervals_and_shares_by_hand():
    """bottom_n_1 - full: +0.02, +0.01, +0.01: mean 0.013333, s = 0.0057735, s / sqrt(3) =
    0.0033333, x 4.302653 = 0.014342: [-0.001009, +0.027676]. all_but_head - full: -0.10,
    -0.09, -0.11: s = 0.01, half-width 0.024841. Share of full's mean 0.72: 0.62 -> 86.11%."""
    curve = depth_curve()
    one = curve.points[1].diff
    assert one.differences == pytest.approx((0.02, 0.01, 0.01))
    assert (one.low, one.high) == (pytest.approx(-0.001009, abs=1e-6),
                                   pytest.approx(0.027676, abs=1e-6))
    head = curve.points[4].diff
    assert (head.low, head.high) == (pytest.approx(-0.124841, abs=1e-6),
                                     pytest.approx(-0.075159, abs=1e-6))
    assert curve.share(0.62) == pytest.approx(86.1111, abs=1e-4)
    assert curve.points[2].diff is None and curve.points[3].diff is None


def test_depth_section_table_paragraph_hours_and_plot(tmp_path):
    outs = []
    for name in ("a", "b"):  # twice: the plot is byte-stable
        out = tmp_path / name / "REPORT.md"
        write_report(DEPTH / "default", out, None, "cmd", depth=DEPTH / "depth")
        outs.append(out)
    text = outs[0].read_text()
    section = text.split("## Frozen depth")[1].split("\n## ")[0]
    default, depth = DEPTH / "default", DEPTH / "depth"
    assert (f"| full | everything | `tweets/minilm/full` (`{default}`) | 0.0001 (grid edge) | "
            "100 | 72.00 ± 2.00 | reference | 100 | 3 | 0.29 |") in section
    # full: a short run of 60 + 10 s and three of 300 + 10 + 20 s: 1,060 s = 0.29 h
    assert (f"| 1 | the top 3 blocks and the head | `tweets/minilm/bottom_n_1` (`{depth}`) | "
            "0.0001 (grid edge) | 22 | 73.33 ± 1.53 | +1.33 [-0.10, +2.77] | "
            "101.9 [99.9, 103.8] | 3 | 0.21 |") in section
    assert "| 2 | the top 2 blocks and the head | not run yet | — |" in section
    assert (f"| 3 | the top block and the head | not run yet: `tweets/minilm/bottom_n_3` "
            f"(`{depth}`) is incomplete, 1 short and 0 full-length run(s), no `selection.json` "
            "| — | — | — | — | — | — | 0.02 so far |") in section
    assert ("| 4 | the head only | `tweets/minilm/all_but_head` "
            f"(`{default}`) | 0.0001 (grid edge) | 0.709 | 62.00 ± 1.73 | "
            "-10.00 [-12.48, -7.52] | 86.1 [82.7, 89.6] | 3 | 0.21 |") in section
    assert "95% t-interval over the 3 paired seeds" in section
    assert "not corrected for the 5 depths" in section
    # Lee et al.'s shape, read off the numbers
    assert "This model has 4 blocks, so a quarter is 1: training only the top block and the " \
           "head (n=3) is not run yet." in section
    assert ("Where at least a quarter of the blocks train, no depth measured a loss against "
            "full fine-tuning (n=0, 1: every paired interval includes zero or lies above it), "
            "and the least kept is 101.4% at n=0") in section
    assert ("n=4 (the head only) measured a loss (-10.00 [-12.48, -7.52] points), as the shape "
            "has it") in section
    assert "Below 90% of full fine-tuning's mean: n=4 (86.1%)." in section
    assert "Not measured yet: n=2, 3, so the curve is open there." in section
    assert "with 3 depths each at 95% and no correction" in section and "about 14%" in section
    # the depth profile: bottom_n_1's 70 + 3 x 230 s and bottom_n_3's 70 s = 830 s = 0.23 h
    assert (f"The depth profile's runs (`{depth}`) took 0.23 core-hours in 5 runs: 0.21 in its 1 "
            "complete cell(s) (4 runs)") in section
    assert (f"The cells it reuses from `{default}` (embeddings, all_but_head) took 0.42 "
            "core-hours in 8 runs, and full fine-tuning's cell 0.29 in 4.") in section
    assert "](depth.png)" in section
    png = [out.parent / "depth.png" for out in outs]
    assert png[0].read_bytes().startswith(b"\x89PNG") and len(png[0].read_bytes()) > 1000
    assert png[0].read_bytes() == png[1].read_bytes()
    assert "](depth.png)" not in text.split("## Plots")[1]  # shown in its section, once


def test_depth_plot_marks_what_is_missing(tmp_path):
    from recipes.report import plots
    from recipes.report.depth import plot_depth

    fig = plot_depth(depth_curve())
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["not run yet", "not run yet"]
    assert [line.get_ydata()[0] for line in ax.lines[:2]] == [0.0, -1.0]
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "4\n(head only)"
    assert "95% t-interval over 3 seeds (uncorrected)" in ax.get_title()
    plots.pyplot().close("all")


def test_depth_runs_on_other_splits_are_refused_and_other_commands_flagged(tmp_path):
    default = Path(shutil.copytree(DEPTH / "default", tmp_path / "default"))
    depth = Path(shutil.copytree(DEPTH / "depth", tmp_path / "depth"))
    run = depth / "tweets/minilm/bottom_n_1/lr0.0001-seed1/results.json"
    saved = run.read_text()
    spoil(run, data={"test": {"rows": 2000, "sha256": "old"}, "train": {"rows": 1500,
                     "sha256": "a1"}, "validation": {"rows": 500, "sha256": "b2"}})
    with pytest.raises(ReportError, match=r"cells tweets/minilm/\w+ and tweets/minilm/bottom_n_1 "
                       r"saw different test splits"):
        depth_curve(default, depth)
    run.write_text(saved)
    data = json.loads(saved)
    spoil(run, command=data["command"].replace("--max_train_samples 1500",
                                               "--max_train_samples 1000"))
    curve = depth_curve(default, depth)
    assert curve.points[1].diff is None
    assert curve.points[1].unpaired == ["--max_train_samples (1000 against 1500)"]
    from recipes.report.depth import plot_depth, table_lines

    row = next(line for line in table_lines(curve) if line.startswith("| 1 |"))
    assert "| not paired: differs in --max_train_samples (1000 against 1500) | — | 3 |" in row
    assert "not paired" in {t.get_text() for t in plot_depth(curve).axes[0].texts}
    from recipes.report import plots

    plots.pyplot().close("all")


def test_depth_refuses_two_cells_at_one_depth_and_reads_a_folder_with_none_complete(tmp_path):
    default = Path(shutil.copytree(DEPTH / "default", tmp_path / "default"))
    depth = Path(shutil.copytree(DEPTH / "depth", tmp_path / "depth"))
    shutil.copytree(depth / "tweets/minilm/bottom_n_1", depth / "tweets/minilm/bottom_n_1b")
    with pytest.raises(ReportError, match="both train at frozen depth 1: keep one"):
        depth_curve(default, depth)
    shutil.rmtree(depth / "tweets/minilm/bottom_n_1b")
    (depth / "tweets/minilm/bottom_n_1/selection.json").unlink()  # nothing complete: all rows
    curve = depth_curve(default, depth)  # still read, as incomplete cells
    assert curve.points[1].incomplete == "tweets/minilm/bottom_n_1"
    assert curve.points[0].cell.short == "embeddings"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert depth_curve(default, empty) is None  # no run at all: no section
