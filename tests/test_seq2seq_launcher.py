"""recipes/run.py --task seq2seq end to end on a tiny random T5 with chatterbot's question/answer
pairs: a frozen encoder, resume, LoRA, and bad input."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import STACK_CASES
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
)

from recipes.launcher.common import ConfigError
from recipes.launcher.main import main
from recipes.launcher.models import resolve_model_path
from recipes.launcher.seq2seq import load_chatterbot_pairs, load_seq2seq_splits

ROOT = Path(__file__).resolve().parent.parent
T5 = next(case for case in STACK_CASES if case.id == "t5")
FROZEN_ENCODER = ["--policy", "freeze_parts", "--policy_options",
                  '{"parts": ["encoder"], "tied_weights": "freeze"}']


def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path("minilm"))


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A 2+3-block random T5 saved with MiniLM's tokenizer (T5's own is not available offline):
    the vocabulary, pad, eos and decoder start ids set from that tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-t5")
    tokenizer = minilm_tokenizer()
    config = AutoConfig.for_model("t5", **{
        **T5.config, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.sep_token_id, "decoder_start_token_id": tokenizer.pad_token_id})
    torch.manual_seed(0)
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def flags(model, out, *extra):
    return ["--model_name_or_path", model, "--task", "seq2seq", "--dataset", "chatterbot",
            "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "8", "--max_train_samples", "24",
            "--max_eval_samples", "8", "--max_length", "24", "--max_target_length", "16",
            "--eval_strategy", "no", "--report_to", "none", "--use_cpu", "true",
            "--learning_rate", "1e-2", "--logging_steps", "1", "--disable_tqdm", "true", *extra]


def test_chatterbot_pairs_are_consecutive_turns_split_like_the_other_tasks():
    pairs = load_chatterbot_pairs()
    assert len(pairs) == len({(p["source"], p["target"]) for p in pairs}) > 1000
    # a question of the corpus is followed by its answer, which is the next pair's source when
    # the conversation goes on
    follows = sum(a["target"] == b["source"] for a, b in zip(pairs, pairs[1:]))
    assert follows > 100
    splits = load_seq2seq_splits("chatterbot", seed=3, max_eval_samples=5)
    assert {name: splits[name].column_names for name in splits} == {
        name: ["source", "target"] for name in ("train", "validation", "test")}
    assert len(splits["validation"]) == len(splits["test"]) == 5
    assert splits["train"][:3] == load_seq2seq_splits("chatterbot", seed=3)["train"][:3]


def test_frozen_encoder_keeps_its_weights_bit_identical_and_reports_eval_and_test_loss(
        tmp_path, tiny_t5):
    out = tmp_path / "out"
    results = main(flags(tiny_t5, out, *FROZEN_ENCODER))
    written = json.loads((out / "results.json").read_text())
    assert written["task"] == "seq2seq" and written["method"] == "freeze"
    for prefix in ("eval", "test"):
        loss = written[f"{prefix}_loss"]
        assert loss > 0 and written[f"{prefix}_perplexity"] == pytest.approx(torch.exp(
            torch.tensor(loss, dtype=torch.float64)).item())
    assert written["frozen_audit"]["passed"] and results["max_steps"] == 3

    base = load_file(Path(tiny_t5) / "model.safetensors")
    trained = load_file(out / "model.safetensors")
    encoder = [n for n in base if n.startswith("encoder.") or n == "shared.weight"]
    decoder = [n for n in base if n.startswith("decoder.block.")]
    assert encoder and all(torch.equal(base[n], trained[n]) for n in encoder if n in trained)
    assert "shared.weight" in trained and torch.equal(base["shared.weight"],
                                                      trained["shared.weight"])
    assert any(not torch.equal(base[n], trained[n]) for n in decoder)

    card = (out / "README.md").read_text()  # the model card's loading code loads this model
    code = re.search(r"## Loading\n\n```python\n(.*?)```", card, re.S).group(1)
    assert "AutoModelForSeq2SeqLM" in code
    namespace = {}
    exec(code, namespace)
    reloaded = namespace["model"].state_dict()
    assert namespace["model"].config.is_encoder_decoder
    assert all(torch.equal(reloaded[n], trained[n]) for n in trained)


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path, tiny_t5):
    steps = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
             "--policy", "bottom_n", "--policy_options",
             '{"n": 1, "stack": "decoder", "tied_weights": "freeze"}']
    whole = main(flags(tiny_t5, tmp_path / "whole", *steps))
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    (resumed_dir / "checkpoint-2").symlink_to(tmp_path / "whole" / "checkpoint-2",
                                              target_is_directory=True)
    resumed = main(flags(tiny_t5, resumed_dir, *steps, "--resume_from_checkpoint", "true"))
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert resumed["eval_loss"] == pytest.approx(whole["eval_loss"], rel=1e-5)
    a = load_file(tmp_path / "whole" / "model.safetensors")
    b = load_file(resumed_dir / "model.safetensors")
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)


def test_lora_uses_the_seq2seq_task_type_and_saves_an_adapter(tmp_path, tiny_t5):
    results = main(flags(tiny_t5, tmp_path / "out", "--max_steps", "1", "--peft_method", "lora",
                         "--peft_options", '{"r": 2, "target_modules": ["q", "v"]}',
                         "--do_predict", "false"))
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM"
    assert results["saved"]["kind"] == "adapter" and results["eval_loss"] > 0


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = minilm_tokenizer()
    config = AutoConfig.for_model("gpt2", n_embd=16, n_layer=1, n_head=2,
                                  vocab_size=len(tokenizer))
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_a_decoder_only_model_is_refused_in_one_line_with_exit_status_2(tmp_path, tiny_gpt2,
                                                                        run_cli):
    done = run_cli(*flags(tiny_gpt2, tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: task='seq2seq' needs an encoder-decoder text model (AutoModelForSeq2SeqLM: t5, "
        f"bart, mt5, pegasus, marian, ...), but model {tiny_gpt2!r} is of type 'gpt2'; for it "
        "use task 'classification' or 'causal_lm' or 'sft'")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": f"q {i}", "answer": f"a {i}"}) + "\n"
                            for i in range(30)))
    return str(path)


@pytest.mark.parametrize("extra,message", [
    ([], r"^source_column='source' is not a column of '.*qa.jsonl'; its columns: question, "
         r"answer$"),
    (["--source_column", "question"],
     r"^target_column='target' is not a column of '.*qa.jsonl'; its columns: question, answer$"),
    (["--source_column", "answer", "--target_column", "answer"],
     r"^source_column and target_column are both 'answer'; name two different columns$"),
])
def test_missing_columns_are_one_line_before_training(extra, message, tmp_path, tiny_t5,
                                                      qa_file):
    argv = flags(tiny_t5, tmp_path / "out", *extra)
    argv[argv.index("chatterbot")] = qa_file
    with pytest.raises(ConfigError, match=message):
        main(argv)
    assert not (tmp_path / "out").exists()


def test_a_file_with_its_own_columns_trains(tmp_path, tiny_t5, qa_file):
    argv = flags(tiny_t5, tmp_path / "out", "--source_column", "question", "--target_column",
                 "answer", "--max_steps", "1", "--save_model", "false")
    argv[argv.index("chatterbot")] = qa_file
    results = main(argv)
    assert results["dataset"] == qa_file and results["test_loss"] > 0


@pytest.mark.parametrize("extra,message", [
    (["--task", "classification", "--predict_with_generate", "true"],
     r"^predict_with_generate is a seq2seq option \(generation at evaluation\); "
     r"task='classification' does not generate$"),
    (["--dataset", "tweets"], r"^source 'tweets' has no source/target pairs"),
    (["--max_target_length", "0"], r"^max_target_length=0 must be an integer >= 1$"),
    (["--max_target_length", "100000"], r"^max_target_length=100000 is longer than the model "
     r"takes \(512 tokens, .*; use at most 512 \(recipes/run.py: --max_target_length\)$"),
])
def test_other_bad_input_is_one_line(extra, message, tmp_path, tiny_t5):
    with pytest.raises(ConfigError, match=message):
        main(flags(tiny_t5, tmp_path / "out", *extra))


def run_script(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "run.py"), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


AUTO_FREEZE_DECODER = ["--policy", "auto_freeze", "--policy_options",
                       '{"stack": "decoder", "tied_weights": "freeze", "every": 1, '
                       '"percentile": 100}']


def test_the_script_killed_after_a_checkpoint_resumes_to_the_uninterrupted_run(tmp_path, tiny_t5):
    """As a user runs it, ``python recipes/run.py --task seq2seq`` with ``auto_freeze`` on the
    decoder (``stack=decoder``): one process trains 4 steps; another is SIGKILLed right after its
    step-2 checkpoint and a third resumes it (``--resume_from_checkpoint true``). The resumed run
    ends with the uninterrupted one's weights, losses and freezing decisions, bit for bit, so
    the same seed gives the same run in fresh processes; the decoder's lowest blocks froze, the
    encoder (outside the stack) trained. One torch thread everywhere, as in the comparison: with
    another thread count a run may differ in the last bit (float sums in another order)."""
    steps = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--seed", "3",
             *AUTO_FREEZE_DECODER]
    whole, out = tmp_path / "whole", tmp_path / "run"
    done = run_script(flags(tiny_t5, whole, *steps))
    assert done.returncode == 0, done.stderr[-3000:]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_after_save.py"), "2",
                           *flags(tiny_t5, out, *steps)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == -9, done.stderr[-3000:]
    assert (out / "checkpoint-2").is_dir() and not (out / "results.json").exists()
    done = run_script(flags(tiny_t5, out, *steps, "--resume_from_checkpoint", "true"))
    assert done.returncode == 0, done.stderr[-3000:]
    reference, resumed = (json.loads((d / "results.json").read_text()) for d in (whole, out))
    assert resumed["resumed_from"].endswith("checkpoint-2")
    a, b = load_file(whole / "model.safetensors"), load_file(out / "model.safetensors")
    assert [n for n in a if not torch.equal(a[n], b[n])] == []
    for key in ("eval_loss", "test_loss", "trainable_params"):
        assert resumed[key] == reference[key], key
    losses = [[e["loss"] for e in r["log_history"] if "loss" in e] for r in (reference, resumed)]
    assert losses[0][2:] == losses[1][-2:]  # steps 3 and 4, trained after the resume
    decisions = [[e for e in r["log_history"] if "auto_freeze_depth" in e]
                 for r in (reference, resumed)]
    assert decisions[0] and decisions[0] == decisions[1]
    assert decisions[0][0]["step"] == 2 and decisions[0][0]["auto_freeze_depth"] == 1

    # decided at step 2, frozen from step 3: decoder block 0 ends as the step-2 checkpoint holds
    # it; the encoder, outside the stack, kept training
    at_2 = load_file(out / "checkpoint-2" / "model.safetensors")
    block0 = [n for n in a if n.startswith("decoder.block.0.")]
    assert block0 and all(torch.equal(at_2[n], a[n]) for n in block0)
    assert all(not torch.equal(at_2[n], a[n]) for n in a
               if n.startswith("encoder.block.") and n.endswith(".q.weight"))
