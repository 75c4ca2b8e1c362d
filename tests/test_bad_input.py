"""Bad input through the launcher and the API: one line naming the bad value and what would be
valid, a non-zero exit, nothing loaded when the value can be checked first, nothing on disk.

In-process cases call ``recipes.launcher.main.main`` with the model loader replaced by one that
fails the test, so "before any model is loaded" is checked, not assumed. Cases where the exit
status and the printed output matter run ``recipes/run.py`` in a subprocess, once through
``accelerate launch`` with two processes.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoConfig, AutoModelForSequenceClassification

from freeze_policies import FreezePolicyError, anatomy, get_policy
from freeze_policies.distributed.guards import check_launch, check_processes
from freeze_policies.policies.named import Custom
from recipes.launcher.common import USER_ERROR_EXIT, ConfigError
from recipes.launcher.main import main, parse_args

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: the error must come before it."""
    from recipes.launcher import models

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(models, "load_model_and_tokenizer", load)


# -- the library ---------------------------------------------------------------------------


def test_bitfit_trains_biases_not_parameters_named_like_them():
    """Funnel's attention has r_w_bias / r_r_bias / r_s_bias weights: not biases."""
    config = AutoConfig.for_model("funnel", block_sizes=[1, 1, 1], d_model=32, n_head=2,
                                  d_head=16, d_inner=37, vocab_size=99, num_labels=3)
    model = AutoModelForSequenceClassification.from_config(config)
    anat = anatomy(model)
    trainable = get_policy("bitfit").trainable_names(anat)
    modules = dict(model.named_modules())
    biases = {name for name in anat.names()
              if getattr(modules[name.rpartition(".")[0]], "bias", None) is not None
              and name.endswith(".bias")}
    assert biases and biases <= trainable
    lookalikes = {name for name in anat.names()
                  if name.rsplit(".", 1)[-1] in ("r_w_bias", "r_r_bias", "r_s_bias")}
    assert len(lookalikes) == 9  # 3 blocks x 3
    assert not lookalikes & trainable
    assert trainable == biases | set(anat.head)


@pytest.mark.parametrize("trainable", [[5], 5, ["classifier", None], {"classifier": 1}])
def test_custom_with_non_string_patterns_is_one_line(trainable):
    message = r"^custom: trainable=.* must be a regex or a list of regexes \(strings\)"
    with pytest.raises(FreezePolicyError, match=message):
        get_policy("custom", trainable=trainable)
    with pytest.raises(FreezePolicyError, match=message):
        Custom(trainable=trainable)
    with pytest.raises(FreezePolicyError, match=r"custom: frozen=\[3\.5\]"):
        get_policy("custom", frozen=[3.5])


# -- the launcher, in process --------------------------------------------------------------


def argv_for(tmp_path, model, *flags):
    return ["--model_name_or_path", model, "--output_dir", str(tmp_path / "out"),
            "--report_to", "none", "--use_cpu", "true", "--max_steps", "1", *flags]


BAD_FLAGS = [
    (["--max_length", "-5"], r"^max_length=-5 must be an integer >= 1$"),
    (["--max_length", "0"], r"^max_length=0 must be an integer >= 1$"),
    (["--learning_rate", "-0.0001"], r"^learning_rate=-0\.0001 must be a number >= 0"),
    (["--learning_rate=-1e-4"], r"^learning_rate=-0\.0001 must be a number >= 0"),
    (["--learning_rate", "nan"], r"^learning_rate=nan must be a number >= 0"),
    (["--learning_rate", "abc"], r"argument --learning_rate.*invalid float value: 'abc'"),
    (["--per_device_train_batch_size", "0"], r"^per_device_train_batch_size=0 must be an integer"),
    (["--per_device_eval_batch_size", "-1"], r"^per_device_eval_batch_size=-1 must be an"),
    (["--gradient_accumulation_steps", "0"], r"^gradient_accumulation_steps=0 must be an integer"),
    (["--max_steps", "-1", "--num_train_epochs", "0"], r"^num_train_epochs=0\.0 trains nothing"),
    (["--weight_decay", "-0.1"], r"^weight_decay=-0\.1 must be a number >= 0"),
    (["--seed", "-1"], r"^seed=-1 must be in 0\.\.4294967295"),
    (["--max_train_samples", "0"], r"^max_train_samples=0 must be an integer >= 1"),
    (["--task", "translation"], r"^task='translation' is not one of classification, causal_lm"),
    (["--text_column", ""], r"^text_column='' must be a non-empty string"),
    (["--learnig_rate", "1e-4"], r"unknown arguments \['--learnig_rate', '1e-4'\] \(did you "
                                 r"mean --learning_rate\?\)"),
    (["--policy", "custom", "--policy_options", '{"trainable": [5]}'],
     r"^custom: trainable=\[5\] must be a regex or a list of regexes"),
    (["--policy", "bottom_n", "--policy_options", '{"n": 1, "blocks": 5}'],
     r"^blocks=5 must be a ModuleList's name \(for example 'encoder\.layer'\) or a list of module "
     r"names"),
    (["--policy", "bottom_n", "--policy_options", "[1, 2]"],
     r"^policy_options='\[1, 2\]' parses as a list \(\[1, 2\]\), not a mapping of option: value; "
     r"e\.g\. --policy_options '\{\"n\": 4\}'"),
    (["--policy_options", '{"n": 2}'], r"^policy_options=\{'n': 2\} is given without policy; "
                                       r"they would be ignored"),
    (["--peft_options", '{"r": 2}'], r"^peft_options=\{'r': 2\} is given without peft_method"),
    (["--policy", ""], r"^policy='' is empty; give a name or leave it out"),
    (["--eval_strategy", "epochs"], r"--eval_strategy.*invalid choice: 'epochs' \(choose from "
                                  r"'no', 'steps', 'epoch'\)"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_before_any_model(tmp_path, tiny_bert, no_model_load, flags,
                                               message):
    with pytest.raises(ConfigError, match=message) as raised:
        main(argv_for(tmp_path, tiny_bert, *flags))
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


BAD_CONFIGS = [
    ("policy: [bottom_n\nlearning_rate: 1\n",
     r"is not valid YAML: expected ',' or '\]', but got ':' at line 2, column 14"),
    ("- policy: bottom_n\n", r"is not a YAML mapping of field: value"),
    ("polcy: bottom_n\n", r"unknown key polcy \(did you mean 'policy'\?\)"),
    ("max_length: many\n", r"max_length='many' in .* is not a valid int"),
    ("max_length: 12.5\n", r"max_length=12\.5 in .* is not a valid int"),
    ("max_length: [64]\n", r"^max_length=\[64\] must be an integer >= 1"),
    ("use_cpu: maybe\n", r"use_cpu='maybe' in .* is not a valid bool"),
    ("learning_rate: true\n", r"learning_rate=True in .* is not a valid float"),
]


@pytest.mark.parametrize("text,message", BAD_CONFIGS, ids=[m[:30] for _, m in BAD_CONFIGS])
def test_bad_config_file_is_one_line_before_any_model(tmp_path, tiny_bert, no_model_load, text,
                                                      message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        main(argv_for(tmp_path, tiny_bert, "--config", str(config)))
    assert not (tmp_path / "out").exists()


def test_config_values_are_typed_as_flags_are(tmp_path, tiny_bert):
    """YAML reads 1e-4 as a string and 64.0 as a float; both mean what the flag would."""
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1e-4\nmax_length: 64.0\nuse_cpu: 'yes'\n")
    model_args, _, _, training_args = parse_args(argv_for(tmp_path, tiny_bert, "--config",
                                                          str(config)))
    assert training_args.learning_rate == 1e-4 and model_args.max_length == 64
    assert training_args.use_cpu is True


@pytest.mark.parametrize("where", ["config", "flag"])
def test_exponent_numbers_inside_options_are_floats(tmp_path, tiny_bert, where):
    """PyYAML (YAML 1.1) reads 1e-3 as text; inside a mapping no dataclass field converts it
    back, so auto_freeze refused its own threshold written that way (json.dumps writes 1e-05)."""
    options = '{"criterion": "param_change", "threshold": 1e-05, "every": 2E1}'
    if where == "config":
        config = tmp_path / "run.yaml"
        config.write_text("policy: auto_freeze\npolicy_options: {criterion: param_change, "
                          "threshold: 1e-5, every: 2E1}\n")
        flags = ["--config", str(config)]
    else:
        flags = ["--policy", "auto_freeze", "--policy_options", options]
    _, _, method_args, _ = parse_args(argv_for(tmp_path, tiny_bert, *flags))
    assert method_args.policy_options == {"criterion": "param_change", "threshold": 1e-5,
                                         "every": 20.0}


def test_binary_or_missing_config_file(tmp_path, tiny_bert, no_model_load):
    binary = tmp_path / "run.yaml"
    binary.write_bytes(b"policy: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"config file '.*run\.yaml' is not UTF-8 text"):
        main(argv_for(tmp_path, tiny_bert, "--config", str(binary)))
    with pytest.raises(ConfigError, match=r"config file '.*' is a directory, not a file"):
        main(argv_for(tmp_path, tiny_bert, "--config", str(tmp_path)))


def test_degenerate_data_is_refused_before_any_model(tmp_path, tiny_bert, no_model_load):
    one_class = tmp_path / "one.csv"
    one_class.write_text("text,label\n" + "".join(f"text {i},yes\n" for i in range(40)))
    with pytest.raises(ConfigError, match=r"label column 'label' has a single class \('yes'\)"):
        main(argv_for(tmp_path, tiny_bert, "--dataset", str(one_class)))
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"data file '.*empty\.csv' is empty \(0 bytes\)"):
        main(argv_for(tmp_path, tiny_bert, "--dataset", str(empty)))
    assert not (tmp_path / "out").exists()


def test_checkpoint_head_of_another_label_count(tmp_path, tiny_bert):
    """tiny_bert's head has 3 outputs; data with 2 labels is refused unless told to replace it."""
    two_class = tmp_path / "two.csv"
    two_class.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(40)))
    argv = argv_for(tmp_path, tiny_bert, "--dataset", str(two_class), "--do_predict", "false")
    with pytest.raises(ConfigError, match=r"^the classification head of '.*' does not fit the "
                                          r"data's 2 labels; pass --ignore_mismatched_sizes true"):
        main(argv)
    assert not (tmp_path / "out").exists()
    results = main([*argv, "--ignore_mismatched_sizes", "true"])
    assert results["trainable_params"] > 0 and (tmp_path / "out" / "results.json").is_file()


def test_output_dir_that_cannot_be_a_directory(tmp_path, tiny_bert, no_model_load):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    with pytest.raises(ConfigError, match=r"^output_dir='.*a_file' is a file; give a directory"):
        main([*argv_for(tmp_path, tiny_bert), "--output_dir", str(blocker)])
    with pytest.raises(ConfigError, match=r"output_dir='.*a_file/run' cannot be created: .*a_file "
                                          r"is a file"):
        main([*argv_for(tmp_path, tiny_bert), "--output_dir", str(blocker / "run")])
    assert blocker.read_text() == "keep me"


# -- options of another task ------------------------------------------------------------------

OTHER_TASK_OPTIONS = [
    (["--generations", "3"], "--generations 3 is read only by task 'sft'; "
     "task='classification' would ignore it: drop it, or give --task sft"),
    (["--max_new_tokens", "16"], "--max_new_tokens 16 is read only by task 'sft'; "
     "task='classification' would ignore it"),
    (["--chat_template", "true"], "--chat_template true is read only by task 'sft'; "
     "task='classification' would ignore it"),
    (["--task", "causal_lm", "--prompt_column", "question"], "--prompt_column question is read "
     "only by task 'sft'; task='causal_lm' would ignore it: drop it, or give --task sft"),
    (["--task", "seq2seq", "--completion_column", "answer"], "--completion_column answer is read "
     "only by task 'sft'; task='seq2seq' would ignore it"),
    (["--task", "sft", "--source_column", "question"], "--source_column question is read only "
     "by task 'seq2seq'; task='sft' would ignore it: drop it, or give --task seq2seq"),
    (["--task", "sft", "--target_column=answer"], "--target_column answer is read only by task "
     "'seq2seq'; task='sft' would ignore it"),
    (["--task", "causal_lm", "--max_target_length", "32"], "--max_target_length 32 is read only "
     "by task 'seq2seq'; task='causal_lm' would ignore it"),
    (["--task", "sft", "--text_column", "body"], "--text_column body is read only by task "
     "'classification' or 'causal_lm'; task='sft' would ignore it: drop it, or give --task "
     "classification or causal_lm"),
    (["--task", "seq2seq", "--label_column", "stars"], "--label_column stars is read only by task "
     "'classification'; task='seq2seq' would ignore it"),
    (["--max-new-tokens", "16"], "--max_new_tokens 16 is read only by task 'sft'"),  # an alias
]


@pytest.mark.parametrize("flags,message", OTHER_TASK_OPTIONS,
                         ids=[" ".join(f) for f, _ in OTHER_TASK_OPTIONS])
def test_an_option_of_another_task_is_one_line_before_any_model(tmp_path, tiny_bert,
                                                                 no_model_load, flags, message):
    """An option only other tasks read would be ignored: refused, naming the flag, its value,
    the task and the tasks that read it (each entry of recipes.launcher.tasks.TASKS lists its
    options)."""
    with pytest.raises(ConfigError) as raised:
        main(argv_for(tmp_path, tiny_bert, *flags))
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_an_option_of_another_task_in_the_config_names_the_file(tmp_path, tiny_bert,
                                                                no_model_load, run_cli):
    config = tmp_path / "run.yaml"
    config.write_text("task: causal_lm\ngenerations: 3\n")
    with pytest.raises(ConfigError, match=r"^generations: 3 in .*run\.yaml is read only by task "
                                          r"'sft'; task='causal_lm' would ignore it: drop it, or "
                                          r"give --task sft$"):
        main(argv_for(tmp_path, tiny_bert, "--config", str(config)))
    # on the command line too (the flag overrides the config, so the flag is named)
    done = run_cli(*argv_for(tmp_path, tiny_bert, "--config", config, "--generations", "4"))
    assert_one_line(done, "error: --generations 4 is read only by task 'sft'; task='causal_lm'")
    assert not (tmp_path / "out").exists()


def test_the_docs_table_of_task_options_is_the_tasks_own():
    """docs/bad-input.md's table lists each entry's options (recipes.launcher.tasks)."""
    from recipes.launcher.tasks import option_tasks

    page = (ROOT / "docs" / "bad-input.md").read_text()
    table = page.split("## Options of another task")[1].split("```")[0]
    documented = {}
    for line in table.splitlines():
        if line.startswith("| `--"):
            options, tasks = line.strip("| ").split(" | ")
            for option in options.split(", "):
                documented[option.strip("`").removeprefix("--")] = [
                    task.strip("`") for task in tasks.split(", ")]
    assert documented == option_tasks()


def test_defaults_and_a_tasks_own_options_are_not_refused(tmp_path, tiny_bert):
    """Every task parses with its own options given and with none (the defaults of the other
    tasks' options are never refused)."""
    from recipes.launcher.tasks import TASKS

    own = {"classification": ["--text_column", "body", "--label_column", "stars",
                              "--ignore_mismatched_sizes", "true"],
           "causal_lm": ["--text_column", "body"],
           "seq2seq": ["--source_column", "q", "--target_column", "a",
                       "--max_target_length", "16"],
           "sft": ["--prompt_column", "q", "--completion_column", "a", "--chat_template", "true",
                   "--generations", "2", "--max_new_tokens", "8"]}
    assert set(own) == set(TASKS)
    for task, flags in own.items():
        for given in ([], flags):
            model_args, _, _, _ = parse_args(argv_for(tmp_path, tiny_bert, "--task", task,
                                                      *given))
            assert model_args.task == task
    config = tmp_path / "run.yaml"
    config.write_text("task: sft\ngenerations: 2\nprompt_column: q\n")
    assert parse_args(argv_for(tmp_path, tiny_bert, "--config", str(config)))[0].generations == 2


# -- distributed launches that only look distributed --------------------------------------


@pytest.mark.parametrize("env,use_cpu,cuda,message", [
    ({"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, True, False,
     r"asks for FSDP2, which accelerate runs on GPUs only, and use_cpu is set"),
    ({"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, False, False,
     r"asks for FSDP1, .* this machine has no GPU: the 2 processes would not shard"),
    ({"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true"}, True, True, r"asks for FSDP1"),
    ({"WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "true"}, True, False, r"asks for DeepSpeed"),
    ({"WORLD_SIZE": "2"}, False, False,
     r"^2 processes were launched \(WORLD_SIZE=2\) on a machine without a GPU and use_cpu is "
     r"false: each process would train alone"),
])
def test_launch_that_would_not_shard_or_would_train_alone_is_refused(env, use_cpu, cuda,
                                                                      message):
    with pytest.raises(FreezePolicyError, match=message):
        check_launch(use_cpu=use_cpu, cuda_available=cuda, environ=env)


@pytest.mark.parametrize("env,use_cpu,cuda", [
    ({}, False, False),  # one process
    ({"WORLD_SIZE": "2"}, True, False),  # DDP over gloo
    ({"WORLD_SIZE": "2"}, False, True),  # DDP on GPUs
    ({"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, False, True),
])
def test_launch_that_trains_as_configured_passes(env, use_cpu, cuda):
    check_launch(use_cpu=use_cpu, cuda_available=cuda, environ=env)


def test_accelerator_with_fewer_processes_than_launched_is_refused():
    with pytest.raises(FreezePolicyError, match=r"2 processes were launched \(WORLD_SIZE=2\) but "
                                                r"the accelerator runs 1: each process would"):
        check_processes(SimpleNamespace(num_processes=1), environ={"WORLD_SIZE": "2"})
    check_processes(SimpleNamespace(num_processes=2), environ={"WORLD_SIZE": "2"})
    check_processes(SimpleNamespace(num_processes=1), environ={})


# -- through the script and the launcher, in subprocesses ----------------------------------


def assert_one_line(done, message):
    """Exit status 2, no traceback, exactly one ``error:`` line, and it is the last line."""
    assert done.returncode == USER_ERROR_EXIT, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == errors[0]
    assert message in errors[0]


def test_script_malformed_yaml_is_one_line(tmp_path, run_cli):
    config = tmp_path / "run.yaml"
    config.write_text("policy: bottom_n\n  policy_options: {n: 2}\n")
    done = run_cli("--config", config, "--output_dir", tmp_path / "out")
    assert_one_line(done, f"error: config file {str(config)!r} is not valid YAML: mapping values "
                          "are not allowed here at line 2, column 17")
    assert not (tmp_path / "out").exists()


def test_script_unwritable_output_dir_is_one_line_before_training(tmp_path, tiny_bert):
    """Run as an unprivileged user when the tests run as root (root may write anywhere)."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no way to be denied a write")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    base = Path(tempfile.mkdtemp())  # pytest's own tmp_path is private to its user
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        home = base / "home"
        home.mkdir()
        home.chmod(0o777)
        env = dict(ENV, HOME=str(home), HF_HOME=str(home / "hf"))
        done = subprocess.run([*prefix, sys.executable, str(ROOT / "recipes" / "run.py"),
                               "--model_name_or_path", tiny_bert, "--output_dir",
                               str(locked / "run"), "--report_to", "tensorboard"],
                              capture_output=True, text=True, env=env, cwd=home, timeout=300)
        assert_one_line(done, f"error: output_dir={str(locked / 'run')!r} is not writable "
                              f"({locked} does not allow creating it): Permission denied")
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("config", ["fsdp2.yaml"])
def test_fsdp_on_cpu_is_refused_once_by_the_launcher(tmp_path, tiny_bert, config):
    """Two processes, each refuses before loading anything; the first prints the line. The
    exit status of ``accelerate launch`` is its own (1); the workers' is 2. One config is
    launched: FSDP1's messages are check_launch's, tested in-process above, and
    tests/test_configs.py loads fsdp.yaml with accelerate's own loader."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / config), "--main_process_port", "0",
               str(ROOT / "recipes" / "run.py"), "--model_name_or_path", tiny_bert,
               "--policy", "bottom_n", "--policy_options", '{"n": 1}', "--use_cpu", "true",
               "--output_dir", str(tmp_path / "out"), "--report_to", "none"]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=tmp_path,
                          timeout=900)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    version = "FSDP2" if config == "fsdp2.yaml" else "FSDP1"
    assert errors[0].startswith(f"error: the accelerate config asks for {version}, which "
                                "accelerate runs on GPUs only, and use_cpu is set")
    assert "[rank" not in done.stderr  # no worker printed a traceback
    assert done.stderr.count(f"exitcode  : {USER_ERROR_EXIT}") >= 1
    assert not (tmp_path / "out").exists()
    assert "results" not in done.stdout

