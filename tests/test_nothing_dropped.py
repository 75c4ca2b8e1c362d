"""Nothing dropped or reinterpreted without a word (issue 26), through ``recipes/run.py``'s
``main`` in process: rows left out of a data file, labels as the file writes them, tasks a model
cannot do, the prefix cache's files, budgets, resumes that cannot match, and a policy on a PEFT
model (through the library: the launcher refuses a policy beside a PEFT method)."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from freeze_policies import FreezePolicyError, get_policy
from freeze_policies.training.prefix_cache import file_prefix
from recipes.launcher.common import ConfigError
from recipes.run import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: the error must come before it."""
    from recipes.launcher import models

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(models, "load_model_and_tokenizer", load)


def argv(tmp_path, model, *flags, out="out"):
    return ["--model_name_or_path", model, "--output_dir", str(tmp_path / out),
            "--report_to", "none", "--use_cpu", "true", "--max_steps", "1",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
            "--max_length", "16", "--do_predict", "false", "--disable_tqdm", "true", *flags]


def write_csv(path, labels):
    path.write_text("text,label\n" + "".join(f"review number {i},{label}\n"
                                            for i, label in enumerate(labels)))
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


# -- rows and labels -------------------------------------------------------------------------


def test_empty_labels_are_left_out_with_a_count_and_integer_labels_keep_integer_names(
        tmp_path, tiny_bert, caplog):
    """pandas reads a label column with empty cells as floats (0.0, 1.0, ...): the classes are
    still named "0", "1", "2", and the two rows without a label are named and counted."""
    labels = [str(i % 3) for i in range(40)]
    labels[3] = labels[10] = ""
    data = write_csv(tmp_path / "reviews.csv", labels)
    with caplog.at_level(logging.WARNING, logger="recipes.data.sources"):
        results = main(argv(tmp_path, tiny_bert, "--dataset", data))
    assert results["rows_left_out"] == {
        "count": 2, "reasons": {"train: with no label in column 'label'": 2}}
    assert sum(split["rows"] for split in results["data"].values()) == 38
    warning = next(r.getMessage() for r in caplog.records if "left out" in r.getMessage())
    assert warning == (f"data file {data!r}: 2 of 40 rows left out before training: 2 with no "
                       "label in column 'label' (rows 4, 11)")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1", "2": "2"}


def test_a_file_that_leaves_nothing_out_records_a_zero_count(tmp_path, tiny_bert):
    data = write_csv(tmp_path / "reviews.csv", [i % 3 for i in range(40)])
    results = main(argv(tmp_path, tiny_bert, "--dataset", data, "--save_model", "false"))
    assert results["rows_left_out"] == {"count": 0, "reasons": {}}


def test_jsonl_rows_without_text_are_counted_for_causal_lm(tmp_path, tiny_bert, monkeypatch):
    """The causal-LM and seq2seq loaders count what they leave out the same way (the task check
    is bypassed here: the loader is what is under test)."""
    from recipes.data.sources import load_causal_lm_splits

    rows = [{"text": f"some words {i}"} for i in range(30)]
    rows[4]["text"] = "   "
    rows[7]["text"] = None
    splits = load_causal_lm_splits(write_jsonl(tmp_path / "texts.jsonl", rows))
    assert splits.rows_left_out.as_dict() == {
        "count": 2, "reasons": {"train: with no text in column 'text'": 2}}
    assert splits.rows_left_out.entries[0]["reasons"] == {
        "with no text in column 'text'": [5, 8]}


BAD_LABELS = [
    ([0.5, 1, 2] * 14, r"label column 'label' holds fractional numbers \(0\.5\), which are not "
                       r"classes; write each class as a whole number or a name in the file$"),
    (["pos", "Pos", "neg"] * 14, r"label column 'label' has labels that differ only in case or "
                                 r"surrounding spaces \('Pos' / 'pos'\); write each class the "
                                 r"same way in every row of the file$"),
    (["pos", " pos", "neg"] * 14, r"label column 'label' has labels that differ only in case or "
                                  r"surrounding spaces \(' pos' / 'pos'\)"),
]


@pytest.mark.parametrize("labels,message", BAD_LABELS, ids=["fractional", "case", "spaces"])
def test_labels_that_are_not_classes_are_refused_before_any_model(tmp_path, tiny_bert,
                                                                  no_model_load, labels, message):
    data = write_csv(tmp_path / "reviews.csv", labels)
    with pytest.raises(ConfigError, match=rf"^data file '.*reviews\.csv': {message}") as raised:
        main(argv(tmp_path, tiny_bert, "--dataset", data))
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_a_label_column_with_no_label_at_all(tmp_path, tiny_bert, no_model_load):
    data = write_csv(tmp_path / "reviews.csv", [""] * 30)
    with pytest.raises(ConfigError, match=r"^data file '.*reviews\.csv': every one of its 30 rows "
                                          r"is left out \(30 with no label in column 'label'\)"):
        main(argv(tmp_path, tiny_bert, "--dataset", data))


def test_jsonl_rows_that_disagree_name_the_file_row_and_column(tmp_path, tiny_bert,
                                                               no_model_load):
    half = [{("text" if i % 2 else "sentence"): f"words {i}", "label": i % 3} for i in range(30)]
    data = write_jsonl(tmp_path / "half.jsonl", half)
    with pytest.raises(ConfigError, match=r"^data file '.*half\.jsonl': row 1 has no 'text' key "
                                          r"\(row 2 has it; row 1 has 'sentence', 'label'\); name "
                                          r"the column 'text' in every row$"):
        main(argv(tmp_path, tiny_bert, "--dataset", data))
    mixed = [{"text": f"words {i}", "label": i % 3 if i < 5 else str(i % 3)} for i in range(30)]
    data = write_jsonl(tmp_path / "mixed.jsonl", mixed)
    with pytest.raises(ConfigError, match=r"^data file '.*mixed\.jsonl': column 'label' is a "
                                          r"number in row 1 \(0\) but a string in row 6 \('2'\); "
                                          r"write every value of a column the same way"):
        main(argv(tmp_path, tiny_bert, "--dataset", data))
    assert not (tmp_path / "out").exists()


def test_a_missing_label_column_names_the_columns_there_are(tmp_path, tiny_bert, no_model_load):
    data = write_jsonl(tmp_path / "rows.jsonl", [{"text": f"w {i}", "stars": i % 3}
                                                 for i in range(30)])
    with pytest.raises(ConfigError, match=r"^label column 'label' not found; available columns: "
                                          r"\['text', 'stars'\]"):
        main(argv(tmp_path, tiny_bert, "--dataset", data))


# -- tasks a model cannot do, messages -------------------------------------------------------


def test_causal_lm_on_an_encoder_is_refused_before_data_or_weights(tmp_path, tiny_bert,
                                                                   no_model_load, monkeypatch):
    from recipes.launcher import build

    monkeypatch.setattr(build, "load_data", lambda *a: pytest.fail("data loaded"))
    with pytest.raises(ConfigError) as raised:
        main(argv(tmp_path, tiny_bert, "--task", "causal_lm", "--dataset", "chatterbot"))
    assert str(raised.value) == (
        "task='causal_lm' needs a decoder (a model that predicts each token from the ones before "
        f"it: Llama, GPT-2, SmolLM2, ...), but model {tiny_bert!r} is a "
        "BertForSequenceClassification (type 'bert', an encoder: it attends both ways and would "
        "see the tokens it is asked to predict); for it use task 'classification'")
    with pytest.raises(ConfigError, match=r"^task='seq2seq' needs an encoder-decoder text model .* "
                                          r"is of type 'bert'; for it use task 'classification'$"):
        main(argv(tmp_path, tiny_bert, "--task", "seq2seq", "--dataset", "chatterbot"))
    assert not (tmp_path / "out").exists()


def test_an_empty_or_adapter_model_folder_is_one_whole_line(tmp_path, no_model_load):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as raised:
        main(argv(tmp_path, str(empty)))
    assert str(raised.value) == (
        f"model folder {str(empty)!r} is empty; give a folder written by save_pretrained (with "
        "config.json and weights), 'minilm', 'smollm2' or a Hub model id")
    (empty / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"is a PEFT adapter folder \(adapter_config\.json\), not "
                                          r"a model; give a folder written by save_pretrained"):
        main(argv(tmp_path, str(empty)))


@pytest.mark.parametrize("text,message", [
    ('{"n": 1', r"^policy_options='\{\"n\": 1' does not parse as YAML or JSON \(expected ',' or "
                r"'\}', but got '<stream end>' at column 8\); give a mapping of option: value, "
                r"e\.g\. --policy_options '\{\"n\": 4\}'"),
    ("n=1", r"^policy_options='n=1' parses as a plain string \('n=1'\), not a mapping of option: "
            r"value; e\.g\. --policy_options '\{\"n\": 4\}' or, in a YAML config, policy_options: "
            r"\{n: 4\}$"),
])
def test_policy_options_that_do_not_parse_say_what_and_show_an_example(tmp_path, tiny_bert,
                                                                       no_model_load, text,
                                                                       message):
    with pytest.raises(ConfigError, match=message):
        main(argv(tmp_path, tiny_bert, "--policy", "bottom_n", "--policy_options", text))


# -- the prefix cache's files ----------------------------------------------------------------


def cache_flags(cache):
    return ["--policy", "bottom_n", "--policy_options", '{"n": 1}', "--max_train_samples", "16",
            "--max_eval_samples", "8", "--cache_frozen_prefix", "true", "--prefix_cache_dir",
            str(cache), "--max_steps", "3", "--save_model", "false"]


def test_prefix_cache_files_go_at_the_end_and_a_killed_runs_files_at_the_next_start(
        tmp_path, tiny_bert, monkeypatch):
    from freeze_policies.training.trainer import FreezeTrainer

    cache = tmp_path / "cache"
    cache.mkdir()
    out = str(tmp_path / "out")
    ours = file_prefix(out)
    (cache / "someone-elses.bin").write_bytes(b"keep")
    (cache / f"{file_prefix(str(tmp_path / 'other-run'))}999999999-1.bin").write_bytes(b"keep")
    stale = cache / f"{ours}999999999-1.bin"  # a killed run of this output_dir (no such pid)
    stale.write_bytes(b"stale")
    live = cache / f"{ours}{os.getppid()}-1.bin"  # a live process of this run (another rank)
    live.write_bytes(b"live")
    seen = []
    step = FreezeTrainer.training_step

    def watching(self, *args, **kwargs):
        loss = step(self, *args, **kwargs)
        seen.append(sorted(p.name for p in cache.iterdir()))
        return loss

    monkeypatch.setattr(FreezeTrainer, "training_step", watching)
    results = main(argv(tmp_path, tiny_bert, *cache_flags(cache)))
    assert results["prefix_cache"]["records"] + results["prefix_cache"]["hits"] == 3
    assert results["prefix_cache"]["bytes"] > 0
    mine = f"{ours}{os.getpid()}-"
    assert all(any(name.startswith(mine) for name in names) for names in seen)  # it was there
    assert stale.name not in seen[0]
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        ["someone-elses.bin", f"{file_prefix(str(tmp_path / 'other-run'))}999999999-1.bin",
         live.name])


def test_prefix_cache_file_goes_when_the_run_is_interrupted(tmp_path, tiny_bert, monkeypatch):
    from freeze_policies.training.trainer import FreezeTrainer

    cache = tmp_path / "cache"
    step = FreezeTrainer.training_step
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(step(self, *args, **kwargs))
        if len(calls) == 2:
            assert any(cache.iterdir())
            raise KeyboardInterrupt
        return calls[-1]

    monkeypatch.setattr(FreezeTrainer, "training_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(argv(tmp_path, tiny_bert, *cache_flags(cache)))
    assert list(cache.iterdir()) == []


LAUNCHERS = {  # how the run is started; SIGTERM goes to that process
    "python": [],
    # accelerate forwards SIGTERM to its child and exits 143 itself
    "accelerate": ["-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "configs" / "accelerate" / "cpu.yaml")],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_prefix_cache_file_goes_when_the_launcher_gets_sigterm(tmp_path, tiny_bert, launcher):
    """recipes/run.py in its own process, directly or under `accelerate launch`, stopped by
    SIGTERM mid-training (as a scheduler stops it): it exits 143 and its cache file is gone, not
    left for the next run."""
    cache = tmp_path / "cache"
    flags = [f for f in cache_flags(cache) if f not in ("--max_steps", "3")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, *LAUNCHERS[launcher], str(ROOT / "recipes" / "run.py"),
         *argv(tmp_path, tiny_bert, *flags, "--max_steps", "100000")],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (cache.is_dir() and any(cache.iterdir())):  # training has started
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no cache file within 120 s"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        process.kill()
        process.wait()
    assert list(cache.iterdir()) == []


def test_a_prefix_cache_dir_that_is_a_file_is_one_line(tmp_path, tiny_bert):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError) as raised:
        main(argv(tmp_path, tiny_bert, *cache_flags(blocker)))
    assert str(raised.value) == (
        f"prefix_cache_dir={str(blocker)!r} is a file; give a folder (it is created if missing) "
        "or leave prefix_cache_dir out to keep the cache in memory")
    assert blocker.read_text() == "not a folder" and not (tmp_path / "out").exists()


# -- budgets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flags,message", [
    (["--budget_step_ratio", "-0.5"], r"^budget: --budget_step_ratio=-0\.5 must be a number > 0$"),
    (["--budget_memory_gb", "0"], r"^budget: --budget_memory_gb=0\.0 must be a number > 0$"),
    (["--budget_step_ratio", "0.5", "--budget_calibration_steps", "-1"],
     r"^budget: --budget_calibration_steps=-1 must be an integer >= 0 \(0: no calibration\)$"),
    (["--budget_calibration_steps", "2"],
     r"^budget: --budget_calibration_steps=2 is given without a budget; add --budget_step_ratio "
     r"and/or --budget_memory_gb, or drop it$"),
    (["--budget_memory_gb", "1", "--budget_calibration_steps", "2"],
     r"^budget: --budget_calibration_steps=2 measures step times, which only --budget_step_ratio "
     r"limits"),
    (["--budget_stack", "encoder"], r"^budget: --budget_stack='encoder' is given without a budget"),
])
def test_bad_budget_flags_are_named_as_typed_before_anything_loads(tmp_path, tiny_bert,
                                                                   no_model_load, flags, message):
    with pytest.raises(ConfigError, match=message):
        main(argv(tmp_path, tiny_bert, *flags))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    from transformers import AutoTokenizer

    from recipes.launcher.models import resolve_model_path

    folder = tmp_path_factory.mktemp("tiny-t5")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = AutoConfig.for_model(
        "t5", d_model=32, d_ff=37, num_layers=2, num_decoder_layers=3, num_heads=2, d_kv=16,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def t5_argv(tmp_path, model, *flags):
    return argv(tmp_path, model, "--task", "seq2seq", "--dataset", "chatterbot",
                "--max_train_samples", "16", "--max_eval_samples", "8", "--max_target_length",
                "8", "--save_model", "false", "--eval_strategy", "no", *flags)


def test_a_budget_on_an_encoder_decoder_freezes_the_stack_named(tmp_path, tiny_t5):
    with pytest.raises(ConfigError, match=r"^budget: T5ForConditionalGeneration has 2 stacks of "
                                          r"blocks \(encoder, decoder\); name the one to freeze "
                                          r"from the bottom with --budget_stack \(one of encoder, "
                                          r"decoder\)$"):
        main(t5_argv(tmp_path, tiny_t5, "--budget_step_ratio", "0.95"))
    with pytest.raises(ConfigError, match=r"^budget: --budget_stack='enc' is not a stack of "):
        main(t5_argv(tmp_path, tiny_t5, "--budget_step_ratio", "0.95", "--budget_stack", "enc"))
    with pytest.raises(ConfigError, match=r"^budget --budget_step_ratio 0\.01 cannot be met: the "
                                          r"deepest freeze, bottom_n\(n=3, stack='decoder'\) \(the "
                                          r"whole stack\)"):
        main(t5_argv(tmp_path, tiny_t5, "--budget_step_ratio", "0.01", "--budget_stack",
                     "decoder"))
    results = main(t5_argv(tmp_path, tiny_t5, "--budget_step_ratio", "0.95", "--budget_stack",
                           "decoder"))
    assert results["policy"] == "bottom_n" and results["policy_options"]["stack"] == "decoder"
    n = results["policy_options"]["n"]
    assert results["budget"]["chosen"] == f"bottom_n(n={n}, stack='decoder')"
    frozen = {group: info for group, info in results["groups"].items()}
    assert frozen  # the summary of what trains was built for the chosen policy
    ratio = next(row["step_ratio"] for row in results["budget"]["candidates"]
                 if row["label"] == results["budget"]["chosen"])
    assert ratio <= 0.95


# -- resumes that cannot match ---------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory, tiny_bert):
    """A bottom_n(n=1) run of tiny_bert with a checkpoint at step 2 (of 4)."""
    tmp = tmp_path_factory.mktemp("resume")
    data = write_csv(tmp / "reviews.csv", [i % 3 for i in range(40)])
    flags = ["--dataset", data, "--policy", "bottom_n", "--policy_options", '{"n": 1}',
             "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
             "--save_model", "false"]
    main(argv(tmp, tiny_bert, *flags, out="run"))
    assert (tmp / "run" / "checkpoint-2" / "trainer_state.json").is_file()
    return tmp, flags


def resume(tmp_path, checkpointed, *flags, model, change=None):
    """Resume a copy of the checkpointed run to step 4 with ``flags`` (``change``: a function
    given the copied checkpoint folder first)."""
    base, _ = checkpointed
    out = tmp_path / "run"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base / "run", out)
    if change is not None:
        change(out / "checkpoint-2")
    return main(argv(tmp_path, model, "--dataset", str(base / "reviews.csv"), "--max_steps", "4",
                     "--save_model", "false", "--resume_from_checkpoint", "true", *flags,
                     out="run"))


SAME_POLICY = ("--policy", "bottom_n", "--policy_options", '{"n": 1}')


def test_resume_with_another_policy_is_one_line_naming_both(tmp_path, tiny_bert, checkpointed,
                                                            no_model_load):
    checkpoint = str(tmp_path / "run" / "checkpoint-2")
    with pytest.raises(ConfigError) as raised:
        resume(tmp_path, checkpointed, "--policy", "top_n", "--policy_options", '{"n": 1}',
               model=tiny_bert)
    assert str(raised.value) == (
        f"checkpoint {checkpoint!r} was trained with policy bottom_n "
        '{"blocks": null, "n": 1, "stack": null, "tied_weights": "error"}, this run has top_n '
        '{"blocks": null, "n": 1, "stack": null, "tied_weights": "error"}: resume with the '
        "checkpoint's policy and options, or start a new run")


def test_resume_with_other_policy_options_or_method_is_refused(tmp_path, tiny_bert,
                                                               checkpointed, no_model_load):
    with pytest.raises(ConfigError, match=r"was trained with policy bottom_n \{.*\"n\": 1.*\}, "
                                          r"this run has bottom_n \{.*\"n\": 2.*\}"):
        resume(tmp_path, checkpointed, "--policy", "bottom_n", "--policy_options", '{"n": 2}',
               model=tiny_bert)
    with pytest.raises(ConfigError, match=r"was trained with policy bottom_n .* this run has no "
                                          r"policy \(full fine-tuning\)"):
        resume(tmp_path, checkpointed, model=tiny_bert)
    with pytest.raises(ConfigError, match=r"was trained with freeze_mode='requires_grad', this run "
                                          r"has freeze_mode='zero_lr'"):
        resume(tmp_path, checkpointed, *SAME_POLICY, "--freeze_mode", "zero_lr",
               model=tiny_bert)
    with pytest.raises(ConfigError, match=r"holds a whole model \(no PEFT adapter\), but this "
                                          r"run's method is 'peft'"):
        resume(tmp_path, checkpointed, "--peft_method", "lora", model=tiny_bert)


def test_resume_with_another_model_is_one_line_naming_both(tmp_path, tiny_bert, checkpointed,
                                                           no_model_load):
    other = tmp_path / "other-bert"
    config = AutoConfig.from_pretrained(tiny_bert)
    config.num_hidden_layers = 2
    AutoModelForSequenceClassification.from_config(config).save_pretrained(other)
    with pytest.raises(ConfigError, match=r"^checkpoint '.*checkpoint-2' is of another model "
                                          r"\(num_hidden_layers=3\) than this run's '.*other-bert' "
                                          r"\(num_hidden_layers=2\): resume with the model it was "
                                          r"trained from, or start a new run$"):
        resume(tmp_path, checkpointed, *SAME_POLICY, model=str(other))


def two_processes(checkpoint):
    """What a 2-process run's checkpoint holds: one rng_state_<rank>.pth per process."""
    for rank in (0, 1):
        shutil.copy(checkpoint / "rng_state.pth", checkpoint / f"rng_state_{rank}.pth")


def test_resume_with_another_process_count_is_warned_in_one_line(tmp_path, tiny_bert,
                                                                 checkpointed, caplog):
    with caplog.at_level(logging.WARNING, logger="recipes.launcher.main"):
        results = resume(tmp_path, checkpointed, *SAME_POLICY, model=tiny_bert,
                         change=two_processes)
    assert results["max_steps"] == 4 and results["resumed_from"].endswith("checkpoint-2")
    warnings = [r.getMessage() for r in caplog.records if "processes" in r.getMessage()]
    assert warnings == [
        f"checkpoint {str(tmp_path / 'run' / 'checkpoint-2')!r} was saved by 2 processes, this "
        "run has 1: the batches and the data order differ from the run that saved it, so the "
        "resumed run will not equal an uninterrupted one"]


def test_resume_with_the_same_settings_runs_without_a_warning(tmp_path, tiny_bert, checkpointed,
                                                              caplog):
    with caplog.at_level(logging.WARNING, logger="recipes.launcher.main"):
        results = resume(tmp_path, checkpointed, *SAME_POLICY, model=tiny_bert)
    assert results["resumed_from"].endswith("checkpoint-2") and results["max_steps"] == 4
    assert not [r for r in caplog.records if "processes" in r.getMessage()]


# -- a policy on a PEFT model (the library) --------------------------------------------------


def lora_bert(**lora):
    from peft import LoraConfig, get_peft_model

    config = AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=3,
                                  num_attention_heads=2, intermediate_size=37, vocab_size=99,
                                  num_labels=3)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=2,
                                            target_modules=["query", "value"], **lora))


def test_a_policy_on_a_peft_model_trains_the_adapters_of_its_blocks_only():
    model = lora_bert()
    names = get_policy("top_n", n=1).apply(model)
    prefix = "base_model.model."
    assert sorted(names) == sorted(prefix + n for n in [
        "bert.encoder.layer.2.attention.self.query.lora_A.default.weight",
        "bert.encoder.layer.2.attention.self.query.lora_B.default.weight",
        "bert.encoder.layer.2.attention.self.value.lora_A.default.weight",
        "bert.encoder.layer.2.attention.self.value.lora_B.default.weight",
        "classifier.modules_to_save.default.weight",
        "classifier.modules_to_save.default.bias",
    ])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(names)
    # one optimizer step over what requires grad: the base weights and PEFT's original copies
    # stay bit-identical, the chosen block's adapters and the head's copy move
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    ids = torch.randint(3, 99, (4, 8))
    model(input_ids=ids, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= set(names)
    assert prefix + "classifier.modules_to_save.default.weight" in moved
    assert not any("base_layer" in n or "original_module" in n or "layer.0." in n for n in moved)


def test_a_policy_whose_blocks_hold_no_adapter_is_refused_in_one_line():
    model = lora_bert(layers_to_transform=[0])
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(FreezePolicyError, match=r"^policy 'custom' on the PEFT model "
                                                r"PeftModelForSequenceClassification trains no "
                                                r"adapter parameter"):
        get_policy("custom", trainable=r"encoder\.layer\.2\.").apply(model)
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}  # untouched
