"""Fixtures shared by the launcher tests (recipes/run.py end to end)."""

import copy
import subprocess
import sys

import pytest
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from recipes.launcher.models import resolve_model_path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A 3-block BERT classifier checkpoint with MiniLM's real tokenizer (no download)."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=3,
                                  num_attention_heads=2, intermediate_size=37,
                                  vocab_size=tokenizer.vocab_size, num_labels=3)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """``recipes/run.py ARGS`` in this process: its ``cli()`` with ``sys.argv`` set, as a
    ``CompletedProcess`` (exit status, stdout, stderr). The wrapper is what a subprocess would
    run; an exception other than ``SystemExit`` escapes and fails the test, as a traceback would.
    Starting ``recipes/run.py`` itself (``sys.path``, ``__main__``) is checked in subprocesses
    by ``test_bad_input.py::test_script_unwritable_output_dir_is_one_line_before_training`` and
    ``test_run.py::test_same_seed_in_fresh_processes_with_other_hash_seeds``."""

    def run(*argv: str) -> subprocess.CompletedProcess:
        from recipes.launcher.main import cli

        argv = ["recipes/run.py", *map(str, argv)]
        monkeypatch.setattr(sys, "argv", argv)
        capsys.readouterr()
        try:
            cli()
            status = 0
        except SystemExit as raised:
            status = raised.code if isinstance(raised.code, int) else int(raised.code is not None)
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(argv, status, captured.out, captured.err)

    return run


@pytest.fixture(scope="session", autouse=True)
def tweets_splits_drawn_once_per_process():
    """In-process launcher runs draw the tweets classification splits once per set of split
    arguments and worker process, not once per run.

    Drawing them is most of a tiny launcher run's time: ``datasets``' stratified
    ``train_test_split`` walks the ~37,000 rows in Python three times (about 8 CPU seconds),
    while the 3-step training on a 3-block model takes well under one. The splits are a pure
    function of these arguments (``tests/test_data.py`` checks that a seed gives the same rows,
    calling the loader itself, which this does not touch), so a second run gets the rows the
    first drew, each split a copy (its own format state, the same Arrow data). Launches in
    subprocesses (``recipes/run.py``, ``accelerate launch``, the seeding test with other hash
    seeds) draw their own. Anything else (another dataset, another task, a test that replaced
    a data function) goes to the launcher's own ``load_data``.
    """
    import datasets

    from recipes.data import sources, splits
    from recipes.launcher import build

    launcher_load_data = build.load_data
    data_functions = (sources.load_classification_splits, sources.load_tweets,
                      splits.complete_splits, splits.subsample, splits.draw)
    drawn = {}

    def load_data(model_args, data_args):
        untouched = data_functions == (sources.load_classification_splits, sources.load_tweets,
                                       splits.complete_splits, splits.subsample, splits.draw)
        if not (untouched and model_args.task == "classification"
                and data_args.dataset == "tweets"):
            return launcher_load_data(model_args, data_args)
        key = (data_args.text_column, data_args.label_column, data_args.dataset_config,
               data_args.data_seed_splits, data_args.max_train_samples,
               data_args.max_eval_samples)
        if key not in drawn:
            drawn[key] = launcher_load_data(model_args, data_args)
        split_dict, label_names = drawn[key]
        return (datasets.DatasetDict({name: copy.deepcopy(split)
                                      for name, split in split_dict.items()}),
                list(label_names))

    patch = pytest.MonkeyPatch()
    patch.setattr(build, "load_data", load_data)
    yield
    patch.undo()
