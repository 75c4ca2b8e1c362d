"""The harness the benchmarks share: flags, model, batches, step timing and the JSON they write.

``recipes/bench.py``'s benchmarks (``step_costs``, ``cache``, ``ddp``, ``freeze_modes`` and
``precision``) each measure something else, and build on the same pieces:

- **Flags** (``add_flags``): ``--out``, ``--model``, ``--batch-size``, ``--seq-len``, ``--device``
  with the same spellings everywhere; ``--batch`` and ``--seq``, the spellings some benchmarks had
  before, are accepted as hidden aliases.
- **Model** (``load_classifier``): a sequence classifier with ``NUM_LABELS`` (3) outputs, the
  tweets corpus's label count, by the launcher's model names (``recipes.launcher.models``); a
  decoder gets a pad token, which it needs to find each row's last token.
- **Batches** (``random_batches``): random token ids and labels from one generator seeded 0, so
  every benchmark and every method in it sees the same tokens; ids are drawn from 1000 up
  (below are BERT's special and unused tokens) or from half the vocabulary on a smaller one.
  ``padded_rows`` pads a share of the rows short, for what re-padding costs.
- **Timing**: ``synchronize`` before reading the clock on CUDA; ``StepTimer`` times a
  ``Trainer``'s steps from ``on_step_begin`` to ``on_step_end`` (data loading and logging
  excluded); ``rotated`` gives the order of an interleaved round (each round starts from a
  different method, so drift in the machine's speed spreads over all of them); ``Rounds`` runs
  such rounds and keeps the ones other work on the machine did not disturb; ``median_time``.
- **Output** (``write_result``): the command, the environment
(``recipes.launcher.common.environment``)
  and the runtime are added, and the file is written atomically.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from recipes.launcher.common import environment, write_json_atomic

NUM_LABELS = 3
LOWEST_ID = 1000
LEARNING_RATE = 1e-5
WEIGHT_DECAY = 0.01


def add_flags(
    parser: argparse.ArgumentParser,
    *,
    out: str,
    model: str | None = "minilm",
    batch_size: int = 32,
    seq_len: int = 64,
    device: bool = True,
) -> argparse.ArgumentParser:
    """The flags every benchmark takes; ``model=None`` leaves out ``--model`` (a benchmark that
    measures one model), ``device=False`` leaves out ``--device`` (a CPU-only one)."""
    parser.add_argument("--out", default=out, help=f"where the JSON goes (default {out})")
    if model is not None:
        parser.add_argument("--model", default=model,
                            help="minilm, smollm2, a model folder or a hub id "
                                 "(recipes.launcher.models)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="rows per batch")
    parser.add_argument("--batch", dest="batch_size", type=int, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, default=seq_len, help="tokens per row")
    parser.add_argument("--seq", dest="seq_len", type=int, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    if device:
        parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """``SystemExit`` with one line unless each of ``names`` is an integer >= 1."""
    bad = [name for name in names if getattr(args, name) < 1]
    if bad:
        flags = ", ".join("--" + name.replace("_", "-") for name in bad)
        raise SystemExit(f"error: {flags} must be >= 1")


def command(script: str, argv: list[str] | None) -> str:
    """The command line that ran ``script``, as recorded in its JSON."""
    shown = sys.argv[1:] if argv is None else argv
    return " ".join(["python", script, *map(shlex.quote, shown)])


def load_classifier(model: str = "minilm", dtype: torch.dtype | None = None):
    """``AutoModelForSequenceClassification`` of ``model`` with a new ``NUM_LABELS``-way head."""
    from transformers import AutoModelForSequenceClassification

    from recipes.launcher.models import resolve_model_path

    load = {} if dtype is None else {"dtype": dtype}
    loaded = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(model), num_labels=NUM_LABELS, **load
    )
    if loaded.config.pad_token_id is None:  # decoders find the last token by the pad id
        loaded.config.pad_token_id = loaded.config.eos_token_id or 0
    return loaded


def random_batches(
    count: int, vocab_size: int, batch_size: int, seq_len: int, *, padded_rows: int = 0
) -> list[dict[str, torch.Tensor]]:
    """``count`` batches of random ids and labels, drawn in turn from one generator seeded 0.

    The first ``padded_rows`` rows of each batch are cut to a random length between half and all
    of ``seq_len`` (ids 0, attention mask 0 after it).
    """
    generator = torch.Generator().manual_seed(0)
    low = min(LOWEST_ID, vocab_size // 2)
    batches = []
    for _ in range(count):
        ids = torch.randint(low, vocab_size, (batch_size, seq_len), generator=generator)
        mask = torch.ones_like(ids)
        if padded_rows:
            lengths = torch.randint(seq_len // 2, seq_len, (padded_rows,), generator=generator)
            for row, length in enumerate(lengths):
                mask[row, length:] = 0
                ids[row, length:] = 0
        labels = torch.randint(0, NUM_LABELS, (batch_size,), generator=generator)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def random_batch(vocab_size: int, batch_size: int, seq_len: int, device="cpu") -> dict:
    """The first of ``random_batches``, on ``device``: the batch every benchmark starts from."""
    batch = random_batches(1, vocab_size, batch_size, seq_len)[0]
    return {key: value.to(device) for key, value in batch.items()}


def repeated_rows(batch: dict, times: int) -> dict[str, list]:
    """``batch`` repeated ``times`` over as columns of lists, for ``datasets.Dataset.from_dict``:
    a ``Trainer`` then sees the same batch at every step."""
    return {
        key: value.cpu().repeat(times, *[1] * (value.dim() - 1)).tolist()
        for key, value in batch.items()
    }


def training_args(output_dir: str, batch_size: int, steps: int, device, **overrides):
    """``TrainingArguments`` for a benchmark's ``Trainer``: ``steps`` steps of ``batch_size`` rows
    with ``torch.optim.AdamW`` (lr 1e-5, weight decay 0.01, as the plain loops), seed 0, and
    nothing else: no logging, saving, evaluation, progress bar or data-loading workers."""
    from transformers import TrainingArguments

    options = dict(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        optim="adamw_torch",
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=torch.device(device).type != "cuda",
        seed=0,
    )
    return TrainingArguments(**{**options, **overrides})


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work, so that the clock reads its end (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rotated(items: list, shift: int) -> list:
    """``items`` starting from position ``shift`` (modulo its length), wrapping around."""
    shift %= len(items)
    return items[shift:] + items[:shift]


def median_time(fn, repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Rounds:
    """Interleaved rounds of one step per method, keeping the undisturbed ones.

    Every round does the same work, so on a quiet machine every round takes about as long. A
    timed round that took more than ``tolerance`` times the fastest timed round was disturbed
    by other work on the machine (on a shared 2-core machine a competing process slows every
    multi-threaded step several-fold) and is left out. Rounds continue until ``wanted``
    undisturbed rounds are in, or ``limit`` timed rounds have run. A runner has a ``label`` and
    ``timed_step(batch, device) -> seconds``.
    """

    def __init__(self, runners: list, batch, device, *, warmup, wanted, limit, tolerance):
        self.runners, self.batch, self.device = runners, batch, device
        self.warmup, self.wanted, self.limit, self.tolerance = warmup, wanted, limit, tolerance
        self.timed: list[dict[str, float]] = []  # one {label: seconds} per timed round
        self.load = [os.getloadavg()[0]]

    def run(self, r: int) -> None:
        """Round ``r`` (0-based, warm-up first), starting from a different method each time."""
        times = {
            runner.label: runner.timed_step(self.batch, self.device)
            for runner in rotated(self.runners, r)
        }
        if r >= self.warmup:
            self.timed.append(times)
        self.load.append(os.getloadavg()[0])

    def add(self, label: str, seconds: float) -> None:
        """Add a step timed outside ``run`` (the trainer's) to the latest timed round."""
        self.timed[-1][label] = seconds

    def totals(self) -> list[float]:
        return [sum(times.values()) for times in self.timed]

    def kept(self) -> list[int]:
        totals = self.totals()
        fastest = min(totals)
        return [i for i, total in enumerate(totals) if total <= self.tolerance * fastest]

    def done(self) -> bool:
        return len(self.timed) >= self.limit or (
            bool(self.timed) and len(self.kept()) >= self.wanted
        )

    def times_of(self, label: str) -> list[float]:
        return [self.timed[i][label] for i in self.kept()]

    def summary(self) -> dict:
        return {
            "timed_rounds": len(self.timed),
            "kept_rounds": self.kept(),
            "round_totals_s": self.totals(),
            "tolerance": self.tolerance,
            "load_average_1min": {"before": self.load[0], "max": max(self.load)},
        }


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step of a ``Trainer``: ``on_step_begin`` to ``on_step_end``."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = device
        self.times: list[float] = []
        self.start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.times.append(time.perf_counter() - self.start)


def write_result(path: str | Path, payload: dict, script: str, argv: list[str] | None,
                 started: float | None = None) -> dict:
    """``payload`` with the command, the environment and (from ``started``, a
    ``time.perf_counter()``) the runtime in whole seconds, written atomically to ``path``."""
    payload = {"command": command(script, argv), **payload, **environment()}
    if started is not None:
        payload["bench_runtime_s"] = math.ceil(time.perf_counter() - started)
    write_json_atomic(Path(path), payload)
    return payload
