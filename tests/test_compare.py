"""Result aggregation: validation-only selection, exact statistics, the report, plots, atomicity."""

import json

import pytest

from recipes import compare
from recipes.compare import ReportError, build_tables, load_runs, method_label, write_report

TOTAL = 1_000_000
LOW, HIGH = 1e-5, 5e-5
# Per (method, lr): validation and test accuracy and test macro-F1 for seeds 1, 2, 3. Validation
# prefers LOW for full and HIGH for bottom_n; test would prefer the other rate in both.
NUMBERS = {
    ("full", LOW): ([0.80, 0.82, 0.84], [0.70, 0.72, 0.74], [0.60, 0.63, 0.66]),
    ("full", HIGH): ([0.70, 0.71, 0.72], [0.90, 0.91, 0.92], [0.90, 0.91, 0.92]),
    ("bottom_n", LOW): ([0.60, 0.61, 0.62], [0.95, 0.95, 0.95], [0.95, 0.95, 0.95]),
    ("bottom_n", HIGH): ([0.75, 0.76, 0.77], [0.71, 0.715, 0.72], [0.50, 0.50, 0.50]),
}
ENVIRONMENT = {
    "hardware": {"platform": "Linux-test", "cpu_count": 2, "torch_threads": 2},
    "versions": {"torch": "2.13.0", "transformers": "5.24.0"},
    "python": "3.11.2",
}


def run_fields(method: str, lr: float, seed: int, **extra) -> dict:
    validation, test, f1 = (values[seed - 1] for values in NUMBERS[(method, lr)])
    freeze = method == "bottom_n"
    return {
        "method": "freeze" if freeze else "full",
        "policy": "bottom_n" if freeze else None,
        "policy_options": {"n": 4} if freeze else {},
        "freeze_mode": "requires_grad" if freeze else None,
        "peft_method": None,
        "peft_options": {},
        "model": "minilm",
        "task": "classification",
        "dataset": "tweets",
        "seed": seed,
        "learning_rate": lr,
        "max_steps": 100,
        "trainable_params": 160_000 if freeze else TOTAL,
        "total_params": TOTAL,
        "eval_accuracy": validation,
        "eval_f1": validation,
        "test_accuracy": test,
        "test_f1": f1,
        "train_runtime": 50.0 if freeze else 100.0,
        "peak_memory_bytes": (1 if freeze else 2) * 2**30,
        "peak_memory_kind": "cpu_max_rss",
        "optimizer_state_bytes": 8 * (160_000 if freeze else TOTAL),
        "frozen_audit": {"passed": True, "checked": 10} if freeze else None,
        "log_history": [],
        **ENVIRONMENT,
        **extra,
    }


def write_run(root, name: str, payload: dict):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(payload))
    return folder / "results.json"


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    for method, lr in NUMBERS:
        for seed in (1, 2, 3):
            write_run(root, f"{method}-{lr:g}-{seed}", run_fields(method, lr, seed))
    return root


def cells_by_label(root, bench=None):
    (table,) = build_tables(load_runs(root), bench)
    return table, {cell.label: cell for cell in table.cells}


def test_the_learning_rate_is_chosen_on_validation_never_on_test(runs_dir):
    _, cells = cells_by_label(runs_dir)
    assert cells["full"].chosen_lr == LOW  # test alone would have picked HIGH (0.91 > 0.72)
    assert cells["bottom_n (n=4)"].chosen_lr == HIGH  # test alone: LOW (0.95 > 0.715)
    assert cells["full"].sweep[LOW].mean == pytest.approx(0.82)
    assert cells["full"].sweep[HIGH].mean == pytest.approx(0.71)


def test_test_metrics_are_mean_and_sample_std_over_seeds_at_the_chosen_rate(runs_dir):
    _, cells = cells_by_label(runs_dir)
    accuracy, f1 = cells["full"].test("test_accuracy"), cells["full"].test("test_f1")
    assert (accuracy.mean, accuracy.std, accuracy.n) == (
        pytest.approx(0.72),
        pytest.approx(0.02),
        3,
    )
    assert (f1.mean, f1.std) == (pytest.approx(0.63), pytest.approx(0.03))
    bottom = cells["bottom_n (n=4)"].test("test_accuracy")
    assert (bottom.mean, bottom.std) == (pytest.approx(0.715), pytest.approx(0.005))


def test_lowest_loss_picks_the_rate_for_causal_lm(tmp_path):
    root = tmp_path / "runs"
    for lr, losses in ((LOW, [2.0, 2.2]), (HIGH, [1.5, 1.7])):
        for seed, loss in enumerate(losses, 1):
            payload = run_fields("full", LOW, seed, task="causal_lm", learning_rate=lr)
            payload.update(eval_loss=loss, test_loss=loss + 0.1, test_perplexity=2.0 + lr)
            write_run(root, f"lm-{lr:g}-{seed}", payload)
    _, cells = cells_by_label(root)
    assert cells["full"].chosen_lr == HIGH
    assert cells["full"].test("test_loss").mean == pytest.approx(1.7)


def test_report_table_rows_plots_and_findings(runs_dir, tmp_path):
    out = tmp_path / "report" / "REPORT.md"
    write_report(runs_dir, out, None, "python recipes/compare.py --results runs")
    text = out.read_text()
    assert "python recipes/compare.py --results runs" in text
    assert "Linux-test; 2 CPUs, 2 torch threads; python 3.11.2" in text
    assert "torch 2.13.0, transformers 5.24.0" in text
    assert (
        "| full | 1,000,000 | 100.00 | 72.00 ± 2.00 | 63.00 ± 3.00 | 3 | 1e-05 | 1.00 (runs) "
        "| 2.0 GiB (RSS) | 7.6 MiB | n/a |" in text
    )
    assert (
        "| bottom_n (n=4) | 160,000 | 16.00 | 71.50 ± 0.50 | 50.00 ± 0.00 | 3 | 5e-05 "
        "| 0.50 (runs) | 1.0 GiB (RSS) | 1.2 MiB | passed (6/6) |" in text
    )
    assert "within 1 point of full fine-tuning (72.00 ± 2.00): bottom_n (n=4) (71.50" in text
    assert "the best test accuracy is full's" in text
    for name in ("accuracy_vs_params.png", "accuracy_vs_time.png", "memory.png"):
        data = (out.parent / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
        assert f"]({name})" in text
    assert not (out.parent / "gradual_unfreezing.png").exists()  # no such cell
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


def test_step_ratios_and_optimizer_bytes_come_from_the_bench_when_it_has_the_method(
    runs_dir, tmp_path
):
    bench_row = {
        "label": "bottom_n (n=4)",
        "method": "freeze",
        "policy": "bottom_n",
        "policy_options": {"n": 4},
        "freeze_mode": "requires_grad",
        "peft_method": None,
        "step_ratio": 0.53,
        "flop_ratio": 0.56,
        "optimizer_state_bytes": 123,
    }
    trainer_row = {**bench_row, "label": "FreezeTrainer bottom_n (n=4)", "step_ratio": 0.9}
    bench = {
        "model": "minilm",
        "methods": [bench_row, trainer_row],
        "targets": {
            "bottom_n_4_faster_than_lora": {
                "value": 0.8,
                "threshold": "< 1",
                "passed": False,
                "explanation": "slow",
            }
        },
    }
    _, cells = cells_by_label(runs_dir, bench)
    bottom = cells["bottom_n (n=4)"]
    assert (bottom.step_ratio, bottom.step_ratio_source) == (0.53, "bench")
    assert bottom.optimizer_state_source == "runs"  # measured in the runs wins over the bench
    assert (cells["full"].step_ratio, cells["full"].step_ratio_source) == (1.0, "runs")

    bench_path = tmp_path / "bench.json"
    bench_path.write_text(json.dumps(bench))
    out = tmp_path / "REPORT.md"
    write_report(runs_dir, out, bench_path, "cmd")
    text = out.read_text()
    assert "| 0.53 (bench) |" in text
    assert "Benchmark target bottom_n_4_faster_than_lora: missed (value 0.8, threshold < 1)" in text


def test_gradual_unfreezing_curve_is_averaged_over_seeds_and_plotted(runs_dir, tmp_path):
    for seed in (1, 2, 3):
        payload = run_fields("bottom_n", HIGH, seed, policy="gradual_unfreeze", policy_options={})
        payload["log_history"] = [
            {"loss": 1.0, "step": 10},
            {"eval_accuracy": 0.5 + 0.01 * seed, "step": 50},
            {"eval_accuracy": 0.6 + 0.01 * seed, "step": 100},
        ]
        write_run(runs_dir, f"gradual-{seed}", payload)
    _, cells = cells_by_label(runs_dir)
    steps, values = compare.validation_curve(cells["gradual_unfreeze"])
    assert steps == [50, 100] and values == pytest.approx([0.52, 0.62])
    out = tmp_path / "REPORT.md"
    write_report(runs_dir, out, None, "cmd")
    assert (tmp_path / "gradual_unfreezing.png").read_bytes().startswith(b"\x89PNG")


def test_a_failed_audit_in_any_run_is_reported(runs_dir):
    path = runs_dir / "bottom_n-1e-05-2" / "results.json"
    payload = json.loads(path.read_text())
    payload["frozen_audit"] = {"passed": False, "checked": 10}
    path.write_text(json.dumps(payload))
    _, cells = cells_by_label(runs_dir)
    assert cells["bottom_n (n=4)"].audit == "FAILED (1/6 runs)"


def test_a_malformed_results_file_names_the_file_and_writes_nothing(runs_dir, tmp_path):
    bad = runs_dir / "full-1e-05-2" / "results.json"
    bad.write_text('{"method": "full", ')
    out = tmp_path / "out" / "REPORT.md"
    out.parent.mkdir()
    out.write_text("previous report")
    with pytest.raises(ReportError, match=str(bad)):
        write_report(runs_dir, out, None, "cmd")
    assert out.read_text() == "previous report"
    assert sorted(p.name for p in out.parent.iterdir()) == ["REPORT.md"]
    with pytest.raises(SystemExit, match="error: .*full-1e-05-2/results.json"):
        compare.main(["--results", str(runs_dir), "--out", str(out)])


def test_missing_metrics_and_duplicate_runs_are_refused(runs_dir, tmp_path):
    write_run(runs_dir, "again", run_fields("full", LOW, 1))
    with pytest.raises(ReportError, match="same method, learning rate 1e-05 and seed 1"):
        load_and_build(runs_dir)
    (runs_dir / "again" / "results.json").write_text(
        json.dumps({**run_fields("full", LOW, 3), "seed": 9, "test_f1": None})
    )
    with pytest.raises(ReportError, match="again/results.json: no numeric test_f1"):
        load_and_build(runs_dir)
    with pytest.raises(ReportError, match="no results.json under"):
        load_runs(tmp_path / "empty")


def load_and_build(root):
    return build_tables(load_runs(root), None)


def test_a_failure_while_writing_leaves_no_partial_files(runs_dir, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

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
        write_report(runs_dir, out, None, "cmd")
    assert list(out.parent.iterdir()) == []


def test_method_labels():
    assert method_label({"method": "full"}) == "full"
    assert method_label({"method": "peft", "peft_method": "lora"}) == "lora"
    run = {"method": "freeze", "policy": "bottom_n", "policy_options": {"n": 4}}
    assert method_label(run) == "bottom_n (n=4)"
    assert method_label({**run, "freeze_mode": "zero_lr"}) == "bottom_n (n=4) zero_lr"
    assert method_label({**run, "freeze_mode": "requires_grad"}) == "bottom_n (n=4)"


def test_two_phase_sweep_selects_on_the_shared_seed(tmp_path):
    """lr A wins on seed 0; seeds 1-2 ran at A only, with lower validation than B's seed 0."""
    from recipes.compare import build_tables

    def run(lr, seed, val):
        return {"model": "m", "dataset": "d", "task": "classification", "method": "full",
                "policy": None, "policy_options": {}, "freeze_mode": None, "peft_method": None,
                "peft_options": {}, "learning_rate": lr, "seed": seed, "eval_accuracy": val,
                "eval_f1": val, "test_accuracy": 0.5, "test_f1": 0.5, "trainable_params": 1,
                "total_params": 1, "train_runtime": 1.0, "max_steps": 1,
                "_path": f"lr{lr}-seed{seed}/results.json"}

    runs = [run(1e-3, 0, 0.80), run(1e-4, 0, 0.75), run(1e-3, 1, 0.60), run(1e-3, 2, 0.60)]
    (table,) = build_tables(runs, None)
    (cell,) = table.cells
    assert cell.chosen_lr == 1e-3  # a mean over all seeds would have picked 1e-4 (0.75 > 0.667)
    assert [r["seed"] for r in cell.chosen] == [0, 1, 2]


def test_training_seconds_leave_out_evaluation_inside_training():
    from recipes.compare import training_seconds

    run = {"train_runtime": 30.0, "log_history": [
        {"loss": 1.0, "step": 10}, {"eval_runtime": 4.0, "step": 10},
        {"eval_runtime": 5.0, "step": 20}, {"train_runtime": 30.0, "step": 30},
        {"eval_runtime": 6.0, "step": 30},  # the final evaluate(), after training
    ]}
    assert training_seconds(run) == 21.0


def test_schedule_timing_does_not_split_bench_matches():
    from recipes.compare import descriptor

    base = {"method": "freeze", "policy": "lisa", "freeze_mode": "requires_grad",
            "peft_method": None}
    assert descriptor({**base, "policy_options": {"k": 2, "every": 10}}) == descriptor(
        {**base, "policy_options": {"k": 2}})
    assert descriptor({**base, "policy_options": {"k": 1}}) != descriptor(
        {**base, "policy_options": {"k": 2}})
