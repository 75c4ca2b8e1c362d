"""What recipes/run.py leaves in output_dir: a model, adapter or freeze delta that reloads to the
reported test metrics, a model card, results.json readable by others; refusals before any model
is loaded; nothing left behind by a failed run; the push through Trainer's own push_to_hub."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertModel,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from freeze_policies import FreezePolicyError, get_policy, load_freeze_delta, save_freeze_delta
from recipes.launcher.common import ConfigError, write_json_atomic
from recipes.launcher.main import main
from recipes.launcher.run_dir import CARD_MARKER

ROOT = Path(__file__).resolve().parent.parent
TEST_METRICS = ("test_loss", "test_accuracy", "test_f1")


@pytest.fixture(autouse=True)
def usual_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def flags(model, out, *extra):
    return ["--model_name_or_path", model, "--output_dir", str(out), "--max_steps", "3",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
            "--max_train_samples", "32", "--max_eval_samples", "16", "--max_length", "32",
            "--eval_strategy", "no", "--report_to", "none", "--use_cpu", "true",
            "--learning_rate", "1e-3", *extra]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if the launcher loads a model (the check must come first)."""
    from recipes.launcher import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad output option was refused")

    monkeypatch.setattr(models, "load_model_and_tokenizer", refuse)


def loading_code(card: str) -> str:
    return re.search(r"## Loading\n\n```python\n(.*?)```", card, re.S).group(1)


def evaluate_test_split(model, tokenizer, tiny_bert, tmp_path) -> dict:
    """The launcher's test split, tokenized and batched as the run did, on ``model``."""
    from recipes.data import sources as data
    from recipes.launcher.build import load_data
    from recipes.launcher.main import parse_args
    from recipes.launcher.tasks import get_task

    model_args, data_args, _, _ = parse_args(flags(tiny_bert, tmp_path / "unused"))
    splits, _labels = load_data(model_args, data_args)
    tokenized = data.tokenize_classification(splits, tokenizer, model_args.max_length)
    args = TrainingArguments(output_dir=str(tmp_path / "eval"), per_device_eval_batch_size=8,
                             report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=get_task("classification").make_compute_metrics())
    return trainer.evaluate(tokenized["test"], metric_key_prefix="test")


SAVED = {
    "full": ([], "model"),
    "freeze": (["--policy", "bottom_n", "--policy_options", '{"n": 2}'], "model"),
    "delta": (["--policy", "bottom_n", "--policy_options", '{"n": 2}',
               "--save_trainable_only", "true"], "delta"),
    "gradual_unfreeze-delta": (["--policy", "gradual_unfreeze", "--policy_options",
                                '{"every": 1, "unit": "steps"}', "--save_trainable_only",
                                "true"], "delta"),
    "lora": (["--peft_method", "lora", "--peft_options",
              '{"r": 4, "target_modules": ["query", "value"]}'], "adapter"),
}


@pytest.mark.parametrize("label", list(SAVED))
def test_saved_output_reloads_to_the_reported_test_metrics(label, tmp_path, tiny_bert):
    extra, kind = SAVED[label]
    out = tmp_path / "out"
    results = main(flags(tiny_bert, out, *extra))
    assert results["saved"]["kind"] == kind
    files = {p.name for p in out.iterdir()}
    weights = {"model": "model.safetensors", "adapter": "adapter_model.safetensors",
               "delta": "freeze_delta.safetensors"}
    assert {weights[kind], "README.md", "results.json", "tokenizer.json"} <= files
    assert not set(weights.values()) - {weights[kind]} & files  # only this kind's weights
    assert results["saved"]["weights"] == [weights[kind]]
    for name in ("results.json", weights[kind], "README.md"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name

    card = (out / "README.md").read_text()
    # a local folder is never the card's base_model (the Hub reads it as a model id)
    assert card.startswith("---\nlibrary_name: ") and CARD_MARKER in card
    assert "base_model:" not in card and f"| base model | `{tiny_bert}` |" in card
    share = results["trainable_params"] / results["total_params"]
    assert (f"| trainable parameters | {results['trainable_params']:,} of "
            f"{results['total_params']:,} ({share:.2%})") in card
    assert results["command"] in card and "--output_dir" in results["command"]
    if "--policy" in extra:
        options = json.dumps(json.loads(extra[3]), sort_keys=True)
        assert f"freeze policy `{extra[1]}` with options `{options}`" in card
    for key in TEST_METRICS:
        assert f"| {key} | {results[key]:.6g} |" in card

    namespace = {}
    exec(loading_code(card), namespace)  # the card's own loading code
    reloaded = evaluate_test_split(namespace["model"], namespace["tokenizer"], tiny_bert,
                                   tmp_path)
    for key in TEST_METRICS:
        assert reloaded[key] == results[key], key

    if kind == "delta":  # the trained share of the model, no more
        delta = load_file(out / "freeze_delta.safetensors")
        saved_params = sum(t.numel() for t in delta.values())
        assert saved_params < results["total_params"] / 2
        assert results["saved"]["weights_bytes"] <= 4 * saved_params + 16384
        record = json.loads((out / "freeze_delta.json").read_text())
        assert set(delta) == set(record["trained"]) and record["untrained_differences"] == []
        if label == "delta":  # fixed policy: what it trains
            assert saved_params == results["trainable_params"]
        else:  # 3 steps, a stage per step: stages 0-2 trained (head, block.2, block.1)
            assert {e["freeze_stage"] for e in results["log_history"]
                    if "freeze_stage" in e} == {0, 1, 2}
            assert not any(".layer.0." in n or "embeddings" in n for n in delta)
            assert any(".layer.1." in n for n in delta)


def test_freeze_delta_saves_what_trained_and_what_the_base_lacks(tmp_path):
    """The base has no classification head: the new head differs from what loading the base
    draws, so it is saved although the policy froze it; base + delta is the model, bit for bit."""
    config = AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=3,
                                  num_attention_heads=2, intermediate_size=37, vocab_size=99)
    BertModel(config).save_pretrained(tmp_path / "base")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=3)
    policy = get_policy("custom", trainable=[r"encoder\.layer\.2\."])
    trained = policy.apply(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in trained:
                param.add_(1.0)  # "training"
    record = save_freeze_delta(model, tmp_path / "delta", trained, policy=policy)
    # the new head's weight is random; its bias starts at zero, as loading the base makes it
    assert record["untrained_differences"] == ["classifier.weight"]
    saved = set(load_file(tmp_path / "delta" / "freeze_delta.safetensors"))
    assert saved == set(trained) | {"classifier.weight"}
    assert record["base_model_name_or_path"] == str(tmp_path / "base")
    assert record["policy"]["name"] == "custom"

    reloaded = load_freeze_delta(tmp_path / "delta")
    expected = dict(model.named_parameters())
    assert type(reloaded) is type(model)
    assert [n for n, p in reloaded.named_parameters() if not torch.equal(p, expected[n])] == []

    other = AutoModelForSequenceClassification.from_config(
        AutoConfig.for_model("bert", hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                             intermediate_size=37, vocab_size=99, num_labels=3))
    from freeze_policies import apply_freeze_delta

    with pytest.raises(FreezePolicyError, match=r"has shape \(.*\): not its base model"):
        apply_freeze_delta(other, tmp_path / "delta")
    with pytest.raises(FreezePolicyError, match="holds no freeze delta"):
        load_freeze_delta(tmp_path / "base")


def test_peft_total_params_counts_the_head_once(tmp_path, tiny_bert):
    results = main(flags(tiny_bert, tmp_path / "out", "--peft_method", "lora", "--peft_options",
                         '{"r": 4, "target_modules": ["query"]}'))
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    lora = sum(t.numel() for name, t in adapter.items() if "lora_" in name)
    assert lora > 0
    assert results["total_params"] == sum(p.numel() for p in base.parameters()) + lora


def test_save_model_false_leaves_only_results(tmp_path, tiny_bert):
    out = tmp_path / "out"
    results = main(flags(tiny_bert, out, "--policy", "top_n", "--policy_options", '{"n": 1}',
                         "--save_model", "false"))
    assert results["saved"] is None
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


REFUSED = [
    (["--save_trainable_only", "true", "--peft_method", "lora"],
     r"save_trainable_only needs method='freeze', not 'peft'"),
    (["--save_trainable_only", "true"], r"save_trainable_only needs method='freeze', not 'full'"),
    (["--policy", "bottom_n", "--policy_options", '{"n": 1}', "--save_trainable_only", "true",
      "--save_model", "false"], r"save_trainable_only=true needs save_model=true"),
    (["--resume_from_checkpoint", "true"],
     r"resume_from_checkpoint=true, but output_dir '.*out' holds no complete checkpoint-N"),
    (["--resume_from_checkpoint", "{tmp}/nowhere"],
     r"resume_from_checkpoint='.*nowhere' does not exist$"),
    (["--resume_from_checkpoint", "{tmp}"], r"resume_from_checkpoint='.*' is not a checkpoint"),
    (["--push_to_hub", "true", "--hub_model_id", "me/tiny-run"],
     r"push_to_hub=true cannot reach the Hub offline \(HF_HUB_OFFLINE=1\) to push 'me/tiny-run'"),
    (["--push_to_hub", "true"], r"offline \(HF_HUB_OFFLINE=1\) to push 'out'"),
]


@pytest.mark.parametrize("extra,message", REFUSED, ids=[m[:40] for _, m in REFUSED])
def test_bad_output_options_fail_before_any_model_loads(extra, message, tmp_path, tiny_bert,
                                                         no_model_loads, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    with pytest.raises(ConfigError, match=message):
        main(flags(tiny_bert, tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()


def test_output_dir_holding_a_run_is_refused_then_overwritten(tmp_path, tiny_bert, monkeypatch):
    out = tmp_path / "out"
    main(flags(tiny_bert, out, "--save_strategy", "steps", "--save_steps", "1"))
    assert {"checkpoint-1", "checkpoint-3", "model.safetensors"} <= {p.name for p in
                                                                      out.iterdir()}
    (out / "notes.txt").write_text("mine")
    (out / ".results.json.abc.tmp").write_text("{")  # from a write killed earlier
    with pytest.raises(ConfigError, match=r"output_dir '.*out' already holds a run "
                       r"\(README.md, checkpoint-1, .*\): pass --overwrite_output_dir true to "
                       r"replace it, or --resume_from_checkpoint true to continue it"):
        main(flags(tiny_bert, out))

    results = main(flags(tiny_bert, out, "--overwrite_output_dir", "true", "--max_steps", "1",
                         "--policy", "bottom_n", "--policy_options", '{"n": 1}',
                         "--save_trainable_only", "true", "--save_strategy", "steps",
                         "--save_steps", "1"))
    names = {p.name for p in out.iterdir()}
    assert "checkpoint-1" in names and "checkpoint-3" not in names  # no mixing of two runs
    assert "model.safetensors" not in names and "freeze_delta.safetensors" in names
    assert "notes.txt" in names and not any(n.endswith(".tmp") for n in names)
    assert results["max_steps"] == 1
    card = (out / "README.md").read_text()
    assert "freeze policy `bottom_n`" in card


def test_failed_run_leaves_no_empty_directory_and_no_temporary_file(tmp_path, tiny_bert,
                                                                    monkeypatch):
    from recipes.launcher import outputs

    def crash(self, *args, **kwargs):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(outputs.RunTrainer, "train", crash)
    with pytest.raises(RuntimeError, match="killed mid-training"):
        main(flags(tiny_bert, tmp_path / "a" / "b" / "out", "--report_to", "tensorboard"))
    assert list(tmp_path.iterdir()) == []  # a/b/out were made for the run: all gone
    monkeypatch.undo()

    def dump_fails(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", dump_fails)  # write_json_atomic's write of results.json
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        main(flags(tiny_bert, out))
    names = sorted(p.name for p in out.iterdir())
    assert "results.json" not in names and not [n for n in names if n.endswith(".tmp")]
    assert "model.safetensors" in names  # what was saved stays


def test_write_json_atomic_mode_and_cleanup(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "s.json", {("not", "a", "str"): 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_push_to_hub_goes_through_trainer_push(tmp_path, tiny_bert, monkeypatch):
    """Trainer's push_to_hub (faked at the Hub API) uploads output_dir as the launcher left it:
    the delta, not a whole model, and the launcher's model card, not Trainer's draft."""
    import transformers.trainer
    from huggingface_hub import constants

    uploads = []

    class FakeHub:
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, **kwargs):
            folder = Path(folder_path)
            uploads.append({"repo_id": repo_id, "folder": folder,
                            "files": sorted(p.name for p in folder.iterdir()),
                            "card": (folder / "README.md").read_text()})

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(transformers.trainer, "hf_api", FakeHub)
    out = tmp_path / "out"
    results = main(flags(tiny_bert, out, "--policy", "bottom_n", "--policy_options", '{"n": 2}',
                         "--save_trainable_only", "true", "--push_to_hub", "true",
                         "--hub_model_id", "me/tiny-run", "--hub_strategy", "end"))
    assert len(uploads) == 1 and uploads[0]["repo_id"] == "me/tiny-run"
    assert uploads[0]["folder"] == out
    assert "freeze_delta.safetensors" in uploads[0]["files"]
    assert "model.safetensors" not in uploads[0]["files"]
    assert CARD_MARKER in uploads[0]["card"] and "bottom_n" in uploads[0]["card"]
    assert "results.json" in uploads[0]["files"] and results["saved"]["kind"] == "delta"


def test_script_resume_from_a_missing_path_is_one_line(tmp_path, tiny_bert, run_cli):
    done = run_cli(*flags(tiny_bert, tmp_path / "out", "--resume_from_checkpoint",
                          str(tmp_path / "gone")))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: resume_from_checkpoint='{tmp_path / 'gone'}' does not exist")
    assert not (tmp_path / "out").exists()


