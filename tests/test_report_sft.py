"""The report of the sft profile (``make report PROFILE=sft``): a loss where lower is better, the
token accuracy as a percentage beside it, paired intervals against full fine-tuning, the Pareto
front, the plots and each method's generations. The fixture is the sft profile's five cells as
``recipes/sweep.py`` and the launcher wrote them with a tiny model
(``tests/data/report/sft/make_fixture.py``)."""

import json
import math
import os
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from recipes.launcher.main import main as launch
from recipes.launcher.results import read_results
from recipes.report import columns, markdown
from recipes.report.cli import write_report
from recipes.report.reading import load_results
from recipes.report.stats import Stat

ROOT = Path(__file__).resolve().parent.parent
SFT = ROOT / "tests" / "data" / "report" / "sft"
CELLS = ROOT / "tests" / "data" / "report" / "sft" / "chatterbot" / "smollm2"
T_975_DF2 = 4.302652729749464  # Student's t, 0.975 quantile, 2 degrees of freedom


def full_length_runs(cell: str) -> list:
    """The cell's full-length runs, by seed."""
    return sorted((read_results(path) for path in (CELLS / cell).glob("lr*-seed*/results.json")),
                  key=lambda run: run.seed)


def row(text: str, label: str) -> list[str]:
    """The first table row of ``text`` whose method is ``label``, as its cells."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("sft-report") / "REPORT.md"
    write_report(SFT, out, None, "python recipes/compare.py --results tests/data/report/sft")
    return out.read_text(), out.parent


def test_the_tables_show_loss_perplexity_and_token_accuracy_as_a_percentage(report):
    text, _ = report
    assert "## smollm2-tiny on chatterbot (sft)" in text
    header = row(text, "method")
    assert header[2:5] == ["test loss", "test perplexity", "test token accuracy (%)"]
    assert header[5:8] == ["test loss − full, mean [95% CI]", "test perplexity − full [CI]",
                           "test token accuracy − full points [CI]"]
    full = full_length_runs("sft_full")
    loss = [run.metrics["test_loss"] for run in full]
    accuracy = [100 * run.metrics["test_token_accuracy"] for run in full]
    cells = row(text, "full")
    assert cells[2] == f"{statistics.fmean(loss):.3f} ± {statistics.stdev(loss):.3f}"
    assert cells[4] == f"{statistics.fmean(accuracy):.2f} ± {statistics.stdev(accuracy):.2f}"
    assert 1 < statistics.fmean(accuracy) < 100  # a percentage, not a share
    # the validation curve keeps a loss's decimals
    curve = [line for line in text.splitlines() if line.startswith("| validation loss |")]
    assert curve and all(len(value.split(".")[1]) == 3 for value in curve[0].split(" | ")[1:-1])


@pytest.mark.parametrize("cell,label", [
    ("sft_bottom_n", "bottom_n (n=3, tied_weights=freeze)"),
    ("sft_auto_freeze", "auto_freeze (every=4, tied_weights=freeze)"),
])
def test_paired_intervals_against_full_by_hand_and_the_verdict_of_a_loss(report, cell, label):
    text, _ = report
    full = {run.seed: run.metrics for run in full_length_runs("sft_full")}
    runs = {run.seed: run.metrics for run in full_length_runs(cell)}
    for key, scale, places in (("test_loss", 1, 3), ("test_token_accuracy", 100, 2)):
        differences = [scale * (runs[seed][key] - full[seed][key]) for seed in (0, 1, 2)]
        mean = statistics.fmean(differences)
        half = T_975_DF2 * statistics.stdev(differences) / math.sqrt(3)
        shown = f"{mean:+.{places}f} [{mean - half:+.{places}f}, {mean + half:+.{places}f}]"
        assert shown in row(text, label), (key, shown)
    loss = [runs[seed]["test_loss"] - full[seed]["test_loss"] for seed in (0, 1, 2)]
    half = T_975_DF2 * statistics.stdev(loss) / math.sqrt(3)
    low, high = statistics.fmean(loss) - half, statistics.fmean(loss) + half
    verdict = ("indistinguishable" if low <= 0 <= high
               else "worse than full" if low > 0 else "better than full")  # a higher loss loses
    assert row(text, label)[9] == verdict


def test_the_pareto_front_prefers_the_lower_loss(report):
    """On the front: no other method trains as few parameters with a loss as low, one of them
    strictly; the findings list it cheapest first."""
    text, _ = report
    (table,) = load_results(SFT).tables
    loss = {cell.label: cell.test("test_loss").mean for cell in table.cells}
    share = {cell.label: cell.trainable_share for cell in table.cells}
    front = [label for label in loss if not any(
        share[other] <= share[label] and loss[other] <= loss[label]
        and (share[other] < share[label] or loss[other] < loss[label]) for other in loss)]
    expected = sorted(front, key=lambda label: share[label])
    assert [c.label for c in markdown.pareto_cells(table, lambda c: c.trainable_share)] == expected
    assert (f"Pareto front of test loss (mean) against trainable share, cheapest first: "
            f"{', '.join(expected)}.") in text
    assert "full" in expected  # the lowest loss is on the front at any cost


def test_the_plots_and_their_captions_name_the_loss(report):
    text, folder = report
    assert sorted(path.name for path in folder.glob("*.png")) == [
        "memory.png", "pareto.png", "time_to_accuracy.png", "validation_curves.png"]
    assert "![Test loss against trainable share (log) and priced step time" in text
    assert "![Validation loss against cumulative priced training cost](time_to_accuracy.png)" \
        in text
    assert "![Validation loss over optimizer steps](validation_curves.png)" in text
    # "what to use when" does not call a lower loss "a measured loss"
    assert "without a measured rise in test loss" in text and "measured loss" not in text


def test_generations_section_gives_each_prompt_its_reference_and_every_methods_answer(report):
    text, _ = report
    section = text.split("### Generations")[1].split("\n## ")[0]
    assert "from its full-length run with seed 0 (the selection seed)" in section
    (table,) = load_results(SFT).tables
    answers = {cell.label: next(run for run in cell.runs if run.seed == 0).generations
               for cell in table.cells}
    prompts = [example["prompt"] for example in answers["full"]]
    assert len(prompts) == 5
    blocks = section.split("**Prompt ")[1:]
    assert len(blocks) == len(prompts)
    for number, (prompt, block) in enumerate(zip(prompts, blocks), 1):
        assert block.startswith(f"{number}:** {markdown.inline(prompt)}\n")
        lines = [line for line in block.splitlines() if line.startswith("| ")]
        reference = next(e["reference"] for e in answers["full"] if e["prompt"] == prompt)
        assert lines[:2] == ["| method | answer |", f"| reference | {markdown.inline(reference)} |"]
        assert [line.split(" | ")[0][2:] for line in lines[2:]] == [c.label for c in table.cells]
        for cell in table.cells:
            example = next(e for e in answers[cell.label] if e["prompt"] == prompt)
            answer = markdown.inline(example["generated"])
            if not example["stopped"]:
                answer += " *(cut)*"
            assert f"| {cell.label} | {answer} |" in lines


def test_generations_escape_text_mark_cut_answers_and_name_other_seeds(tmp_path):
    """A prompt with pipes and markup, a reference on two lines, an empty answer cut at the
    token limit; a method whose selection seed recorded none shows another seed's, a method
    that recorded none is named."""
    root = Path(shutil.copytree(SFT, tmp_path / "runs"))
    first = read_results(root / "chatterbot/smollm2/sft_full/lr0.0949-seed0/results.json")
    original = first.generations[0]["prompt"]
    for path in root.rglob("results.json"):
        data = json.loads(path.read_text())
        for example in data.get("generations") or []:
            if example["prompt"] == original:
                example.update(prompt="a | b *c* <d>", reference="line one\nline two")
                if "sft_full" in str(path):
                    example.update(generated=" ", stopped=False)
        if "sft_lora" in str(path) and data["seed"] == 0 or "sft_top_n" in str(path):
            data["generations"] = None
        path.write_text(json.dumps(data))
    write_report(root, tmp_path / "REPORT.md", None, "test")
    section = (tmp_path / "REPORT.md").read_text().split("### Generations")[1]
    assert "**Prompt 1:** a \\| b \\*c\\* \\<d\\>" in section
    assert "| reference | line one<br>line two |" in section
    assert "| full [seed 0] | *(empty)* *(cut)* |" in section
    assert "| lora [seed 1] |" in section  # the first seed after the selection seed
    assert "with the seed in brackets" in section
    assert "No generations recorded for top_n (n=2, tied_weights=freeze)." in section
    assert "| top_n" not in section
    assert markdown.inline("x\r\ny|z") == "x<br>y\\|z" and markdown.inline("") == "*(empty)*"


def test_classification_keeps_every_metric_as_a_percentage():
    from recipes.launcher.tasks import TASKS

    classification, sft = TASKS["classification"].metrics, TASKS["sft"].metrics
    assert all(classification.is_percent(key) for key, _ in classification.reported)
    assert [sft.is_percent(key) for key, _ in sft.reported] == [False, False, True]
    assert not TASKS["causal_lm"].metrics.is_percent("test_loss")
    assert columns.format_stat(Stat(0.1234, 0.01, 3), True) == "12.34 ± 1.00"


def test_make_report_for_the_sft_profile_writes_its_own_folder():
    """Not the shared default/smollm2 report: its runs, its folder, no MiniLM bench."""
    def dry_run(*args):
        done = subprocess.run(["make", "-n", "-o", ".venv/.setup-done", "report", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"))
        assert done.returncode == 0, done.stderr
        return done.stdout

    committed = dry_run("PROFILE=sft", "UPDATE=1")
    assert "--results results/runs/sft --out results/sft/REPORT.md" in committed
    local = dry_run("PROFILE=sft")
    assert "--out results/local/sft/REPORT.md" in local
    for text in (committed, local):
        assert "--bench results/bench.json" not in text and "--depth" not in text


def test_the_fixture_is_what_the_launcher_writes(tmp_path, tiny_llama, pairs_file):
    """A tiny sft run now writes the keys the fixture's runs hold (and the same generation
    keys): if this fails, regenerate the fixture with tests/data/report/sft/make_fixture.py."""
    out = tmp_path / "out"
    launch(["--model_name_or_path", tiny_llama, "--task", "sft", "--dataset", pairs_file,
            "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--max_length", "16", "--eval_strategy", "no", "--report_to", "none",
            "--use_cpu", "true", "--save_model", "false", "--generations", "2",
            "--max_new_tokens", "3", "--disable_tqdm", "true"])
    ours = json.loads((out / "results.json").read_text())
    fixture = json.loads((CELLS / "sft_full" / "lr0.0949-seed1" / "results.json").read_text())
    assert set(ours) == set(fixture)
    assert {tuple(sorted(e)) for e in ours["generations"]} == {
        tuple(sorted(e)) for e in fixture["generations"]}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-block Llama with a word-level tokenizer that has an eos token."""
    import torch
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<eos>", "hi", "how", "are", "you", "fine", "yes", "no", "ok"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path_factory.mktemp("tiny-llama")
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>",
                            pad_token="<pad>").save_pretrained(folder)
    config = AutoConfig.for_model("llama", hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1,
                                  intermediate_size=24, vocab_size=len(words),
                                  tie_word_embeddings=True, pad_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    words = ["hi", "how", "are", "you", "fine", "yes", "no", "ok"]
    rows = [{"prompt": f"{words[i % 8]} {words[(i * 3) % 8]} {i % 5}",
             "completion": f"{words[(i * 5) % 8]} {words[(i + 1) % 8]}"} for i in range(30)]
    path = tmp_path_factory.mktemp("sft-pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_each_table_states_the_core_hours_its_runs_recorded(report):
    """The CPU time a profile took, from the runs themselves: training plus the evaluations
    logged after it, times torch threads, summed over full-length and short runs."""
    from recipes.report.aggregate import recorded_hours

    def seconds(path: Path) -> float:
        data = json.loads(path.read_text())
        history = data["log_history"]
        end = next(i for i, entry in enumerate(history) if "train_runtime" in entry)
        after = sum(entry.get("eval_runtime", 0) + entry.get("test_runtime", 0)
                    for entry in history[end + 1:])
        return (data["train_runtime"] + after) * data["hardware"]["torch_threads"]

    (table,) = load_results(SFT).tables
    for cell in table.cells:
        paths = sorted((SFT / cell.name).glob("**/results.json"))
        runs = cell.all_runs
        assert len(runs) == len(paths) > 3
        assert math.isclose(recorded_hours(runs) * 3600, sum(map(seconds, paths)))
        assert recorded_hours(runs) * 3600 > sum(run.train_runtime for run in runs)

    text, _ = report
    every = sorted(CELLS.glob("*/**/results.json"))
    short = [path for path in every if path.parent.parent.name == "sweep"]
    line = next(line for line in text.splitlines() if line.startswith("Recorded time: "))
    hours = sum(map(seconds, every)) / 3600
    assert line.startswith(
        f"Recorded time: {hours:.2f} core-hours in {len(every)} runs "
        f"({sum(map(seconds, set(every) - set(short))) / 3600:.2f} in "
        f"{len(every) - len(short)} full-length runs, {sum(map(seconds, short)) / 3600:.2f} in "
        f"{len(short)} short runs); by method: full ")


def test_a_run_whose_time_includes_a_pause_is_named(tmp_path):
    """A run stopped for a while records its pause in train_runtime; the report keeps its score
    and names it beside the recorded time, against its cell's median."""
    root = tmp_path / "sft"
    shutil.copytree(SFT, root)
    paused = root / "chatterbot/smollm2/sft_top_n"
    (path,) = [p for p in paused.glob("lr*-seed1/results.json")]
    data = json.loads(path.read_text())
    data["train_runtime"] *= 50
    path.write_text(json.dumps(data))
    out = tmp_path / "REPORT.md"
    write_report(root, out, None, "python recipes/compare.py --results sft")
    line = next(line for line in out.read_text().splitlines()
                if line.startswith("Recorded time: "))
    assert "Recorded more than 3x the median" in line
    named = line.split("are suspect): ")[1]
    assert named.count("`") == 2, named  # one run, the paused one
    assert named.split("`")[1].endswith("sft_top_n/" + path.parent.name + "/results.json")
    clean = tmp_path / "CLEAN.md"
    write_report(SFT, clean, None, "python recipes/compare.py --results sft")
    assert "Recorded more than 3x" not in clean.read_text()


def test_without_a_benchmark_the_report_says_its_costs_are_the_runs_own(report):
    text, _ = report
    assert "- **Costs.** No benchmark was given (`--bench`)" in text
    assert "interleaved benchmark" not in text  # it would describe pricing that did not happen
    assert "| full | 100 | — | 1.00 (runs); " in text  # the cost table's priced step
