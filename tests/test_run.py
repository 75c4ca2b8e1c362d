"""recipes/run.py end to end: every method on tiny checkpoints, results.json, and bad input."""

import json
import os
import random
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedTokenizerFast,
)

from freeze_policies import list_policies
from recipes.launcher.common import ConfigError
from recipes.launcher.main import main
from recipes.launcher.results import SCHEMA_VERSION, RunResults

ROOT = Path(__file__).resolve().parent.parent
WORDS = "the cat sat on a mat and dog ran to park happy sad day good bad".split()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 3-block Llama checkpoint with a word-level tokenizer and tied embeddings."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", *WORDS])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        eos_token="<eos>")
    config = AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=3,
                                  num_attention_heads=2, num_key_value_heads=1,
                                  intermediate_size=37, vocab_size=len(vocab),
                                  tie_word_embeddings=True, eos_token_id=1, bos_token_id=1)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def lm_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    lines = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(12)) for i in range(60)]
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    return str(path)


def run(tmp_path, model, *flags):
    out = tmp_path / "out"
    argv = ["--model_name_or_path", model, "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
            "--max_train_samples", "32", "--max_eval_samples", "16", "--max_length", "32",
            "--eval_strategy", "no", "--report_to", "none", "--use_cpu", "true",
            "--logging_steps", "1", *flags]
    results = main(argv)
    written = json.loads((out / "results.json").read_text())
    assert written["method"] == results["method"]
    # written through the schema: its version, and nothing it would not read back unchanged
    record = RunResults.from_dict(written)
    assert written["schema_version"] == SCHEMA_VERSION and record.extra == {}
    assert json.loads(json.dumps(record.as_dict(), default=str)) == written
    return written


CLASSIFICATION_METHODS = [
    ("full", []),
    ("bottom_n", ["--policy", "bottom_n", "--policy_options", '{"n": 2}']),
    ("gradual_unfreeze", ["--policy", "gradual_unfreeze", "--policy_options",
                          '{"every": 1, "unit": "steps"}']),
    ("lisa", ["--policy", "lisa", "--policy_options", '{"k": 1, "every": 1}']),
    ("bitfit-zero_lr", ["--policy", "bitfit", "--freeze_mode", "zero_lr"]),
    ("all_but_head-zero_grad", ["--policy", "all_but_head", "--freeze_mode", "zero_grad",
                                "--audit", "log", "--learning_rate", "1e-2"]),
    ("lora", ["--peft_method", "lora", "--peft_options", '{"r": 4, "target_modules": ["query"]}']),
    ("dora", ["--peft_method", "dora", "--peft_options", '{"r": 4, "target_modules": ["value"]}']),
    ("ia3", ["--peft_method", "ia3"]),
    ("prompt_tuning", ["--peft_method", "prompt_tuning", "--peft_options",
                       '{"num_virtual_tokens": 4}']),
]


@pytest.mark.parametrize("label,flags", CLASSIFICATION_METHODS, ids=[m for m, _ in
                                                                     CLASSIFICATION_METHODS])
def test_every_method_runs_on_tweets_and_writes_results(tmp_path, tiny_bert, label, flags):
    results = run(tmp_path, tiny_bert, *flags)
    peft = "--peft_method" in flags
    expected_method = "full" if label == "full" else "peft" if peft else "freeze"
    assert results["method"] == expected_method
    assert results["dataset"] == "tweets" and results["max_steps"] == 2
    # the command round-trips through a shell: JSON options with spaces stay one word
    assert shlex.split(results["command"])[-len(flags):] == flags or not flags
    assert results["data"]["train"]["rows"] == 32 and results["data"]["test"]["rows"] == 16
    for key in ("eval_accuracy", "eval_f1", "test_accuracy", "test_f1"):
        assert 0.0 <= results[key] <= 1.0
    assert 0 < results["trainable_params"] <= results["total_params"]
    if label == "full":
        assert results["trainable_params"] == results["total_params"]
    if expected_method != "full":
        assert results["trainable_params"] < results["total_params"]
    assert results["train_runtime"] > 0 and results["train_samples_per_second"] > 0
    assert results["peak_memory_bytes"] > 0
    assert set(results["versions"]) >= {"torch", "transformers", "peft", "accelerate"}
    if expected_method == "freeze":
        assert results["frozen_audit"]["checked"] > 0
        assert results["frozen_audit"]["passed"] is (results["freeze_mode"] != "zero_grad")


def test_cached_prefix_run_records_cache_stats(tmp_path, tiny_bert):
    results = run(tmp_path, tiny_bert, "--policy", "bottom_n", "--policy_options", '{"n": 2}',
                  "--cache_frozen_prefix", "true", "--max_steps", "12")
    cache = results["prefix_cache"]
    assert cache["depth"] == 2 and cache["bytes"] > 0
    assert cache["records"] == 8 and cache["hits"] == 4  # 32 examples / batch 4: epoch 2 replays
    assert results["frozen_audit"]["passed"]


def test_causal_lm_reports_perplexity(tmp_path, tiny_llama, lm_corpus):
    results = run(tmp_path, tiny_llama, "--task", "causal_lm", "--dataset", lm_corpus,
                  "--policy", "bottom_n", "--policy_options", '{"n": 1, "tied_weights": "train"}')
    assert results["task"] == "causal_lm"
    assert results["eval_perplexity"] == pytest.approx(2.718281828 ** results["eval_loss"])
    assert results["frozen_audit"]["passed"]


def test_prefix_tuning_runs_on_a_decoder_and_is_refused_clearly_on_bert(tmp_path, tiny_llama,
                                                                       tiny_bert, lm_corpus):
    flags = ["--peft_method", "prefix_tuning", "--peft_options", '{"num_virtual_tokens": 4}']
    results = run(tmp_path / "llama", tiny_llama, "--task", "causal_lm", "--dataset", lm_corpus,
                  *flags)
    assert results["peft_method"] == "prefix_tuning" and results["eval_loss"] > 0
    with pytest.raises(ConfigError, match=r"peft_method='prefix_tuning': Model does not support "
                       r"past key values"):
        run(tmp_path / "bert", tiny_bert, *flags)
    assert not (tmp_path / "bert" / "out").exists()


def test_decoder_classifier_gets_a_pad_token(tmp_path, tiny_llama):
    results = run(tmp_path, tiny_llama, "--policy", "top_n", "--policy_options", '{"n": 1}')
    assert 0.0 <= results["test_accuracy"] <= 1.0


BAD_INPUT = [
    (["--config", "missing.yaml"], r"config file 'missing.yaml' does not exist"),
    (["--policy", "bottom_n", "--method", "peft", "--peft_method", "lora"],
     r"policy='bottom_n' is only used with method='freeze', not 'peft'"),
    (["--peft_method", "loraa"], r"peft_method='loraa' is not one of lora, dora, ia3"),
    (["--policy", "botom_n"], r"unknown policy 'botom_n' \(did you mean 'bottom_n'\?\)"),
    (["--policy", "bottom_n", "--policy_options", '{"n": 9}'],
     r"bottom_n: n=9 is out of range for BertForSequenceClassification with 3 blocks"),
    (["--dataset", "{csv}", "--label_column", "sentiment"],
     r"label column 'sentiment' .*available columns: \['text', 'label'\]"),
    (["--model_name_or_path", "./no/such/model"], r"no/such/model"),
    (["--peft_method", "lora", "--peft_options", '{"rank": 4}'],
     r"peft_options \['rank'\] are not options of LoraConfig"),
    (["--task", "translation"], r"task='translation' is not one of classification, causal_lm"),
]


@pytest.mark.parametrize("flags,message", BAD_INPUT, ids=[m[:30] for _, m in BAD_INPUT])
def test_bad_input_fails_before_training_and_writes_nothing(tmp_path, tiny_bert, flags, message):
    csv = tmp_path / "data.csv"
    csv.write_text("text,label\n" + "".join(f"example {i},{i % 2}\n" for i in range(40)))
    flags = [flag.replace("{csv}", str(csv)) for flag in flags]
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_bert, "--output_dir", str(out), "--max_steps", "1",
            "--report_to", "none", "--use_cpu", "true", *flags]
    with pytest.raises((ConfigError, FileNotFoundError, ValueError), match=message):
        main(argv)
    assert not out.exists()  # nothing half-written


def test_failed_training_leaves_no_results_claiming_success(tmp_path, tiny_bert, monkeypatch):
    from freeze_policies import FreezeTrainer

    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"stale": true}')  # from an earlier run

    def crash(self, *args, **kwargs):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(FreezeTrainer, "train", crash)
    with pytest.raises(RuntimeError, match="killed mid-training"):
        run(tmp_path, tiny_bert, "--policy", "bottom_n", "--policy_options", '{"n": 1}',
            "--overwrite_output_dir", "true")
    assert not (out / "results.json").exists()


def test_script_prints_one_line_error_without_traceback(tmp_path, run_cli):
    done = run_cli("--policy", "xyz", "--output_dir", tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: unknown policy 'xyz'")


def test_preview_cli_prints_anatomy_and_every_policy(tiny_bert, capsys):
    from freeze_policies import list_policies
    from freeze_policies.__main__ import main as preview

    preview([tiny_bert])
    out = capsys.readouterr().out
    assert "class: BertForSequenceClassification, 3 blocks" in out
    for name in list_policies():
        assert f"== {name}" in out
    bottom = out.split("== bottom_n")[1].split("== ")[0]
    assert "block.1" in bottom and bottom.count("100.00%") == 2  # block.2 and the head


def test_preview_cli_bad_model_is_one_line(tmp_path):
    from freeze_policies.__main__ import main as preview

    with pytest.raises(SystemExit, match=r"^error: .*no/such/model"):
        preview([str(tmp_path / "no" / "such" / "model")])


# -- the same command and seed give the same run ------------------------------------------------
# Options that fit the 3-block test model and change stage within the 3 steps of a run; a policy
# registered later without an entry runs with its defaults.
SEEDED_POLICY_OPTIONS = {
    "bottom_n": {"n": 1},
    "top_n": {"n": 1},
    "custom": {"trainable": ["classifier", r"layer\.2\."]},
    "gradual_unfreeze": {"every": 1, "unit": "steps"},
    "lisa": {"k": 1, "every": 1},
    "auto_freeze": {"every": 1},
}
SEEDED = {
    "full": [],
    **{name: ["--policy", name, "--policy_options", json.dumps(SEEDED_POLICY_OPTIONS.get(name, {}))]
       for name in list_policies()},
    "lora": ["--peft_method", "lora", "--peft_options", '{"r": 4, "target_modules": ["query"]}'],
    "dora": ["--peft_method", "dora", "--peft_options", '{"r": 4, "target_modules": ["value"]}'],
    "ia3": ["--peft_method", "ia3"],
    "prompt_tuning": ["--peft_method", "prompt_tuning", "--peft_options",
                      '{"num_virtual_tokens": 4}'],
}


def seeded_flags(model, out, *extra):
    return ["--model_name_or_path", model, "--output_dir", str(out), "--max_steps", "3",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
            "--max_train_samples", "16", "--max_eval_samples", "8", "--max_length", "24",
            "--eval_strategy", "no", "--report_to", "none", "--use_cpu", "true",
            "--logging_steps", "1", "--learning_rate", "1e-2", "--seed", "7", *extra]


def same_run(first: dict, second: dict, folders) -> None:
    """Bit-identical metrics, per-step losses and gradient norms, and saved weights."""
    keys = [k for k in first if k.startswith(("eval_", "test_")) and not k.endswith(
        ("_runtime", "_per_second"))] + ["train_loss"]
    assert {k: first[k] for k in keys} == {k: second[k] for k in keys}
    steps = [[(e["step"], e["loss"], e["grad_norm"]) for e in r["log_history"] if "loss" in e]
             for r in (first, second)]
    assert steps[0] == steps[1] and len(steps[0]) == 3
    weights = first["saved"]["weights"]
    assert weights == second["saved"]["weights"] and weights
    for name in weights:
        a, b = (load_file(Path(folder) / name) for folder in folders)
        assert a.keys() == b.keys()
        assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("label", list(SEEDED))
def test_same_seed_gives_identical_metrics_and_weights(label, tmp_path, tiny_bert):
    """Two runs in one process, the global generators scrambled in between: anything drawn
    before the launcher seeds (a head, an adapter, prompt embeddings) would differ."""
    first = main(seeded_flags(tiny_bert, tmp_path / "a", *SEEDED[label]))
    torch.manual_seed(12345)
    random.seed(12345)
    np.random.seed(12345)
    second = main(seeded_flags(tiny_bert, tmp_path / "b", *SEEDED[label]))
    same_run(first, second, [tmp_path / "a", tmp_path / "b"])


def test_same_seed_prefix_tuning_on_a_decoder(tmp_path, tiny_llama, lm_corpus):
    extra = ["--task", "causal_lm", "--dataset", lm_corpus, "--peft_method", "prefix_tuning",
             "--peft_options", '{"num_virtual_tokens": 4}']
    first = main(seeded_flags(tiny_llama, tmp_path / "a", *extra))
    torch.manual_seed(999)
    second = main(seeded_flags(tiny_llama, tmp_path / "b", *extra))
    same_run(first, second, [tmp_path / "a", tmp_path / "b"])


@pytest.mark.parametrize("label", ["lisa", "lora"])
def test_same_seed_in_fresh_processes_with_other_hash_seeds(label, tmp_path, tiny_bert):
    """Two launcher processes at once, as sweep cells run, with different PYTHONHASHSEED (set
    and dict orders of names differ): the same run."""
    procs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONHASHSEED=hash_seed)
        argv = seeded_flags(tiny_bert, tmp_path / hash_seed, *SEEDED[label])
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "recipes" / "run.py"), *argv],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, env=env))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    results = [json.loads((tmp_path / s / "results.json").read_text()) for s in ("1", "2")]
    same_run(*results, [tmp_path / "1", tmp_path / "2"])
    assert results[0]["data"] == results[1]["data"]  # the same rows, in the same order
