"""The benchmark harness (recipes/benchmarks/harness.py), the PEFT table the launcher and the
benchmarks share,
and recipes/bench.py steps end to end on a tiny model (one round)."""

from __future__ import annotations

import argparse
import json
import os
import stat

import pytest
import torch

from recipes.benchmarks import harness as benchlib
from recipes.launcher.peft_methods import PEFT_METHODS, added_tokens, build_peft_model, peft_options


def test_batches_come_from_one_seeded_stream_and_pad_the_asked_rows():
    first, second = benchlib.random_batches(2, 5000, 8, 16, padded_rows=2)
    again = benchlib.random_batches(2, 5000, 8, 16, padded_rows=2)
    assert torch.equal(first["input_ids"], again[0]["input_ids"])
    assert not torch.equal(first["input_ids"], second["input_ids"])  # drawn in turn, not reseeded
    assert set(first) == {"input_ids", "attention_mask", "labels"}
    assert first["labels"].shape == (8,) and set(first["labels"].tolist()) <= {0, 1, 2}
    mask = first["attention_mask"]
    assert mask[2:].all() and not mask[:2].all()  # only the first two rows are cut short
    for row in range(2):
        length = int(mask[row].sum())
        assert 8 <= length < 16 and (first["input_ids"][row, length:] == 0).all()
        assert (first["input_ids"][row, :length] >= benchlib.LOWEST_ID).all()
    # A vocabulary smaller than 2000 draws from its upper half instead of failing.
    small = benchlib.random_batch(99, 4, 8)
    assert small["input_ids"].min() >= 49 and small["input_ids"].max() < 99


def test_the_batch_is_the_one_the_benchmarks_drew_before_they_shared_it():
    """bench.py drew ids then labels from a generator seeded 0; committed results used it."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30522, (4, 8), generator=generator)
    labels = torch.randint(0, 3, (4,), generator=generator)
    batch = benchlib.random_batch(30522, 4, 8)
    assert torch.equal(batch["input_ids"], ids) and torch.equal(batch["labels"], labels)


def test_flags_have_one_spelling_and_accept_the_old_one_hidden():
    parser = benchlib.add_flags(argparse.ArgumentParser(), out="x.json", batch_size=8)
    assert vars(parser.parse_args([])) | {"device": None} == {
        "out": "x.json", "model": "minilm", "batch_size": 8, "seq_len": 64, "device": None}
    old = parser.parse_args(["--batch", "4", "--seq", "16"])
    new = parser.parse_args(["--batch-size", "4", "--seq-len", "16"])
    assert (old.batch_size, old.seq_len) == (new.batch_size, new.seq_len) == (4, 16)
    shown = parser.format_help()
    assert "--batch-size" in shown and "--batch " not in shown and "--seq " not in shown
    with pytest.raises(SystemExit, match=r"--batch-size, --seq-len must be >= 1"):
        benchlib.check_positive(argparse.Namespace(batch_size=0, seq_len=0), "batch_size",
                                "seq_len")


class ScriptedRunner:
    def __init__(self, label: str, times: list[float]):
        self.label, self.times = label, list(times)

    def timed_step(self, batch, device) -> float:
        return self.times.pop(0)


def test_rounds_rotate_the_order_and_leave_out_disturbed_rounds():
    a = ScriptedRunner("a", [9, 1, 1, 5, 1, 1])  # warm-up, then a disturbed third round
    b = ScriptedRunner("b", [9, 1, 1, 5, 1, 1])
    rounds = benchlib.Rounds([a, b], None, "cpu", warmup=1, wanted=4, limit=5, tolerance=1.2)
    r = 0
    while not rounds.done():
        rounds.run(r)
        r += 1
    assert len(rounds.timed) == 5 and rounds.kept() == [0, 1, 3, 4]
    assert rounds.times_of("a") == [1, 1, 1, 1]
    assert benchlib.rotated([1, 2, 3], 4) == [2, 3, 1]


def test_results_are_written_atomically_with_the_command_and_environment(tmp_path):
    out = tmp_path / "deep" / "bench.json"
    payload = benchlib.write_result(out, {"rows": [1]}, "recipes/x.py", ["--out", "a b"], 0.0)
    assert json.loads(out.read_text()) == json.loads(json.dumps(payload, default=str))
    assert payload["command"] == "python recipes/x.py --out 'a b'"
    assert {"versions", "hardware", "python"} <= set(payload) and payload["bench_runtime_s"] >= 1
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_the_peft_table_is_what_the_bench_measures():
    from recipes.benchmarks.methods import METHODS

    benched = [m.peft_method for m in METHODS if m.method == "peft"]
    assert benched == [name for name, e in PEFT_METHODS.items() if e.bench_options is not None]
    assert "prefix_tuning" not in benched  # BERT has no past key values
    assert peft_options("dora", {"r": 2, "use_dora": False})["use_dora"] is True
    assert peft_options("prompt_tuning", {}) == {"num_virtual_tokens": 10}
    assert added_tokens("prompt_tuning", {"num_virtual_tokens": 4}) == 4
    assert added_tokens("prefix_tuning", {"num_virtual_tokens": 4}) == 0  # keys, not inputs
    assert added_tokens(None, {}) == 0


@pytest.fixture(scope="module")
def tiny_bert_folder(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = tmp_path_factory.mktemp("bench") / "bert6"
    config = AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=6,
                                  num_attention_heads=2, intermediate_size=37, vocab_size=99,
                                  num_labels=3)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    return folder


def test_build_peft_model_takes_plain_values_and_trains_the_head(tiny_bert_folder):
    model = benchlib.load_classifier(str(tiny_bert_folder))
    wrapped = build_peft_model(model, "classification", "dora",
                               {"r": 2, "target_modules": ["query"]})
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert any("lora_magnitude_vector" in n for n in trainable)  # DoRA, from the table's fixed
    assert any("classifier" in n and "modules_to_save" in n for n in trainable)


def test_bench_runs_one_round_on_a_tiny_model(tiny_bert_folder, tmp_path):
    from recipes.benchmarks import step_costs as bench

    out = tmp_path / "bench.json"
    payload = bench.main(["--model", str(tiny_bert_folder), "--rounds", "1", "--max-rounds", "1",
                          "--warmup", "0", "--batch-size", "2", "--seq-len", "8", "--no-trainer",
                          "--device", "cpu", "--out", str(out)])
    written = json.loads(out.read_text())
    labels = [row["label"] for row in written["methods"]]
    assert labels[0] == "full" and "lora" in labels and "prompt_tuning" in labels
    assert written["command"].startswith("python recipes/bench.py steps --model")
    full = written["methods"][0]
    assert full["step_ratio"] == 1.0 and full["flop_ratio"] == pytest.approx(1.0)
    assert set(written["targets"]) == set(payload["targets"]) and written["batch_size"] == 2


@pytest.mark.parametrize("mode", ["requires_grad", "zero_lr", "zero_grad"])
def test_bench_freeze_modes_keep_the_frozen_weights_and_are_the_librarys(mode, tiny_bert_folder):
    """bench.py's bottom_n rows freeze as the trainer does: frozen weights bit-identical after
    two steps (requires_grad, zero_lr); no optimizer state for them under requires_grad; lr=0
    groups under zero_lr; under zero_grad their gradients zeroed by the library's hooks (weight
    decay still moves them there, as the modes' docstring says)."""
    from recipes.benchmarks.methods import build_runner, freeze

    base = benchlib.load_classifier(str(tiny_bert_folder))
    spec = freeze("bottom_n", mode, n=1)
    runner = build_runner(spec, base, 8)
    frozen = {id(p) for p in runner.frozen}
    names = {n for n, p in runner.model.named_parameters() if id(p) in frozen}
    assert names and all(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.")) for n in names)
    before = {n: p.detach().clone() for n, p in runner.model.named_parameters()}
    batch = benchlib.random_batch(base.config.vocab_size, 2, 8)
    for _ in range(2):
        runner.step(batch, measure=True)
    after = dict(runner.model.named_parameters())
    if mode != "zero_grad":
        assert all(torch.equal(before[n], after[n]) for n in names)
    assert any(not torch.equal(before[n], after[n]) for n in after if n not in names)
    state = runner.optimizer.state
    if mode == "requires_grad":
        assert not any(id(p) in frozen for p in state)
        assert all(not p.requires_grad for p in runner.frozen)
    if mode == "zero_lr":
        frozen_groups = [g for g in runner.optimizer.param_groups if g.get("name", "").startswith(
            "frozen")]
        assert frozen_groups and all(g["lr"] == 0.0 for g in frozen_groups)
        assert {id(p) for g in frozen_groups for p in g["params"]} == frozen
    if mode == "zero_grad":
        assert all(torch.count_nonzero(state[p]["exp_avg"]) == 0 for p in runner.frozen)


def test_padding_bench_counts_each_batch_at_its_longest_row():
    """recipes/bench.py padding: a batch costs rows x its longest row (dynamic padding)."""
    import numpy as np

    from recipes.benchmarks.padding import measure, padded_tokens

    lengths = np.array([1, 5, 1, 5])
    assert padded_tokens(lengths, [0, 1, 2, 3], 2) == 2 * 5 + 2 * 5
    assert padded_tokens(lengths, [0, 2, 1, 3], 2) == 2 * 1 + 2 * 5
    assert padded_tokens(lengths, [3, 1, 0], 2) == 2 * 5 + 1 * 1  # a short last batch
    row = measure(np.array([1, 5] * 64), 8, "sequential")
    assert row["real_tokens"] == 384 and row["sequential_ratio"] == 640 / 384
    assert row["group_by_length_ratio"] < 1.2  # grouped batches hardly pad (one mixed batch)
