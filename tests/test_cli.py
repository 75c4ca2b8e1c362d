"""The preview CLI, ``python -m freeze_policies``: the right head per task, one policy with its
options and cost preview, refusals as one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from freeze_policies import list_policies
from freeze_policies.__main__ import AUTO_CLASSES, USER_ERROR_EXIT, main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory):
    """A 3-block Llama causal LM whose lm_head is the input embedding matrix."""
    folder = tmp_path_factory.mktemp("tied-llama")
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", "a", "b", "c"])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                            eos_token="<eos>").save_pretrained(folder)
    config = AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=3,
                                  num_attention_heads=2, num_key_value_heads=1,
                                  intermediate_size=37, vocab_size=len(vocab),
                                  tie_word_embeddings=True, eos_token_id=1, bos_token_id=1)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return str(folder)


def test_causal_lm_task_loads_the_lm_head_and_shows_the_tie(tied_llama, capsys):
    main([tied_llama, "--task", "causal_lm"])
    out = capsys.readouterr().out
    assert "(task causal_lm)\nclass: LlamaForCausalLM, 3 blocks" in out
    assert "tied: lm_head.weight = model.embed_tokens.weight" in out
    for name in list_policies():
        assert f"== {name}" in out
    # all_but_head would train lm_head and freeze the embeddings: the same tensor
    refusal = out.split("== all_but_head")[1].splitlines()[0]
    assert refusal.startswith(": refused for this model: policy 'all_but_head' would train "
                              "lm_head.weight but freeze model.embed_tokens.weight")


def test_sft_task_loads_the_causal_lm_head_as_the_launcher_does(tied_llama, capsys):
    """--task sft is the launcher's supervised fine-tuning: a decoder with its LM head."""
    main([tied_llama, "--task", "sft", "--policy", "bottom_n", "--policy_options",
          '{"n": 2, "tied_weights": "freeze"}'])
    out = capsys.readouterr().out
    assert "(task sft)\nclass: LlamaForCausalLM, 3 blocks" in out
    assert "tied: lm_head.weight = model.embed_tokens.weight" in out


def test_every_launcher_task_has_the_launchers_auto_class():
    """The preview keeps its own table (the library must not import the recipes); every task
    the launcher trains is in it, with the same Auto class."""
    from recipes.launcher.tasks import TASKS as LAUNCHER_TASKS

    for name, task in LAUNCHER_TASKS.items():
        assert AUTO_CLASSES.get(name) == task.auto_class, name


def test_classification_task_is_the_default(tied_llama, capsys):
    main([tied_llama])
    out = capsys.readouterr().out
    assert "(task classification)\nclass: LlamaForSequenceClassification, 3 blocks" in out


@pytest.mark.parametrize("case_id,task,model_class,stacks", [
    ("t5", "seq2seq", "T5ForConditionalGeneration",
     "stacks: encoder: 2 blocks (encoder.block.0 .. 1), feeds decoder; decoder: 3 blocks "
     "(decoder.block.0 .. 2)"),
    ("clip", "dual_encoder", "CLIPModel",
     "stacks: vision_model: 3 blocks (vision_model.encoder.layers.0 .. 2), feature encoder of 1 "
     "tensors; text_model: 2 blocks (text_model.encoder.layers.0 .. 1)"),
])
def test_other_families_load_their_auto_class_and_show_their_stacks(
        case_id, task, model_class, stacks, tmp_path, capsys):
    from tiny_models import STACK_CASES

    next(case for case in STACK_CASES if case.id == case_id).build().save_pretrained(tmp_path)
    first_stack = stacks.split(":")[1].strip()
    main([str(tmp_path), "--task", task, "--policy", "freeze_parts", "--policy_options",
          json.dumps({"parts": [first_stack], "tied_weights": "freeze"})])
    out = capsys.readouterr().out
    assert f"(task {task})\nclass: {model_class}, 5 blocks" in out
    assert stacks in out.splitlines()


def test_one_policy_with_options_prints_the_cost_preview(tied_llama, capsys):
    main([tied_llama, "--task", "causal_lm", "--policy", "bottom_n", "--policy_options",
          '{"n": 2, "tied_weights": "freeze"}', "--seq_len", "16", "--batch_size", "4"])
    out = capsys.readouterr().out
    assert "== bottom_n {'n': 2} (stage 0)" in out and out.count("== ") == 1
    table = out.split("== bottom_n")[1]
    assert "block.1" in table and "block.2" in table
    assert "cost preview (FLOP model, predicted; batch 4 x 16 tokens)" in out
    assert "backward stops at block.2, through 1 of 3 blocks" in out


@pytest.mark.parametrize("flags,message", [
    (["--task", "causal_lm", "--policy", "all_but_head"],
     "error: policy 'all_but_head' would train lm_head.weight but freeze "
     "model.embed_tokens.weight, which is the same tensor (tied weights)"),
    (["--policy", "bottom_n", "--policy_options", '{"n": 7}'],
     "error: bottom_n: n=7 is out of range for LlamaForSequenceClassification with 3 blocks"),
    (["--policy", "botom_n"], "error: unknown policy 'botom_n' (did you mean 'bottom_n'?)"),
    (["--policy", "custom", "--policy_options", '{"trainable": [5]}'],
     "error: custom: trainable=[5] must be a regex or a list of regexes"),
    (["--policy", "bottom_n", "--policy_options", "n=2"],
     "error: --policy_options='n=2' parses as a plain string ('n=2'), not a mapping of option: "
     "value; e.g. --policy_options '{\"n\": 4}'"),
    (["--policy_options", '{"n": 2}'], "error: --policy_options needs --policy NAME"),
    (["--task", "speech"], "error: argument --task: invalid choice: 'speech'"),
    (["--task", "seq2seq"], "error: --task seq2seq: AutoModelForSeq2SeqLM does not take a 'llama' "
     "model; valid --task values: classification, causal_lm, seq2seq, sft, speech_seq2seq, ctc, "
     "vision_language, dual_encoder"),
    (["--seq_len", "0"], "error: --seq_len 0 must be an integer >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(tied_llama, capsys, flags, message):
    with pytest.raises(SystemExit) as raised:
        main([tied_llama, *flags])
    assert raised.value.code == USER_ERROR_EXIT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_module_run_prints_one_line_without_traceback(tied_llama):
    done = subprocess.run([sys.executable, "-m", "freeze_policies", tied_llama, "--task",
                           "causal_lm", "--policy", "embeddings"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert done.returncode == USER_ERROR_EXIT
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: policy 'embeddings' would train lm_head.weight but freeze "
        "model.embed_tokens.weight, which is the same tensor (tied weights); pass "
        "tied_weights='train' to train both or tied_weights='freeze' to freeze both"]


# -- the bundled models' aliases, as the launcher takes them ----------------------------------


def test_minilm_alias_is_the_bundled_model(capsys):
    main(["minilm", "--policy", "bottom_n", "--policy_options", '{"n": 4}'])
    out = capsys.readouterr().out
    from freeze_policies.examples import model_path

    assert out.startswith(f"model: minilm ({model_path('minilm')}) (task classification)\n"
                          "class: BertForSequenceClassification, 6 blocks")
    assert "total           3,697,923   22,714,371  16.28%" in out


def test_smollm2_alias_reads_the_converted_folder(tied_llama, tmp_path, monkeypatch, capsys):
    """``smollm2`` is the converted checkpoint in the cache (converted once; here a tiny Llama
    stands in for it): the preview finds it by the alias, without the Hub."""
    import shutil

    shutil.copytree(tied_llama, tmp_path / "smollm2-135m-instruct")
    monkeypatch.setenv("FREEZE_POLICIES_CACHE", str(tmp_path))
    main(["smollm2", "--task", "causal_lm", "--policy", "bottom_n", "--policy_options",
          '{"n": 1}', "--tied_weights", "freeze"])
    out = capsys.readouterr().out
    folder = tmp_path / "smollm2-135m-instruct"
    assert out.startswith(f"model: smollm2 ({folder}) (task causal_lm)\n"
                          "class: LlamaForCausalLM, 3 blocks")


def test_a_model_that_cannot_be_loaded_is_one_line_naming_it(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as raised:
        main(["no-such-model-here"])
    assert raised.value.code == USER_ERROR_EXIT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: could not load MODEL 'no-such-model-here' (a model folder, a hub id, or a "
        "bundled model: minilm, smollm2): "), err
