"""The launcher's ``output_dir`` before a run: its options, the resume, and what a run owns there.

Before any model is loaded (``open_run_dir``):

- ``--resume_from_checkpoint`` is resolved as ``run_glue.py`` does: ``true`` takes the last
  ``checkpoint-N`` in ``output_dir`` (the last complete one: a checkpoint without its
  ``trainer_state.json``, cut short by a kill during the save, is skipped with a warning); a path
  must be a checkpoint folder. Anything else is a one-line error.
- An ``output_dir`` that is not empty is refused unless ``--overwrite_output_dir true`` (the
  earlier run's ``checkpoint-*`` folders, ``results.json``, weights, delta, adapter, config and
  model card are then removed, so two runs never mix) or a resume is asked for.
- Writability is checked by ``recipes.launcher.arguments.check_output_dir`` while the arguments are
  parsed; nothing is created before training. The directories of ``output_dir`` that did not exist
  when the run started are removed again if the run fails while they are empty (``RunDir.failed``),
  and so are the temporary files of an interrupted write.

Whether the checkpoint of a resume can reproduce the run is ``recipes.launcher.resuming``.
What the run leaves there after training is ``recipes.launcher.outputs``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from transformers import Seq2SeqTrainingArguments, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from freeze_policies.training.delta import DELTA_CONFIG, DELTA_WEIGHTS

logger = logging.getLogger("recipes.launcher.main")

RESULTS = "results.json"
MODEL_CARD = "README.md"
CARD_MARKER = "<!-- written by freeze-policies recipes/run.py -->"
# What a run of the launcher writes at its top level (besides the tokenizer files and logs).
RUN_FILES = (
    RESULTS, "config.json", "generation_config.json", "model.safetensors",
    "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
    "adapter_model.safetensors", "adapter_config.json", "training_args.bin", DELTA_WEIGHTS,
    DELTA_CONFIG,
)
RUN_PATTERNS = (
    "model-*-of-*.safetensors", "pytorch_model-*-of-*.bin", f"{PREFIX_CHECKPOINT_DIR}-*",
)
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class OutputError(ValueError):
    """A problem with output_dir or the output options, found before training: one line."""


@dataclass
class RunTrainingArguments(Seq2SeqTrainingArguments):
    """``TrainingArguments`` plus the launcher's output options. It extends
    ``Seq2SeqTrainingArguments`` (``TrainingArguments`` plus ``predict_with_generate`` and the
    generation options), which ``--task seq2seq``'s trainer reads; the other tasks refuse those
    options (``recipes.launcher.parsing``)."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "replace the run in a non-empty output_dir (its checkpoints, "
                  "results.json and saved model are removed first)"},
    )
    save_model: bool = field(
        default=True,
        metadata={"help": "save the model (freeze/full), adapter (peft) or delta and a model "
                  "card in output_dir at the end"},
    )
    save_trainable_only: bool = field(
        default=False,
        metadata={"help": "freeze runs: save only the parameters that trained plus the base "
                  "model's id/path (load with freeze_policies.load_freeze_delta)"},
    )


# -- before the run ---------------------------------------------------------------------------


def check_output_options(method: str, args: RunTrainingArguments) -> None:
    """One-line errors for output options that cannot work together."""
    if args.save_trainable_only and method != "freeze":
        raise OutputError(
            f"save_trainable_only needs method='freeze', not {method!r} (a peft run saves only its "
            "adapter already; full fine-tuning trains every parameter)"
        )
    if args.save_trainable_only and not args.save_model:
        raise OutputError("save_trainable_only=true needs save_model=true")
    if args.push_to_hub:
        if not args.save_model:
            raise OutputError("push_to_hub=true needs save_model=true: there would be no model")
        from huggingface_hub import constants

        if constants.is_offline_mode():
            raise OutputError(
                f"push_to_hub=true cannot reach the Hub offline (HF_HUB_OFFLINE=1) to push "
                f"{hub_id(args)!r}; set HF_HUB_OFFLINE=0 with a network and a token, or drop "
                "push_to_hub"
            )
        strategy = getattr(args.hub_strategy, "value", args.hub_strategy)
        if args.save_trainable_only and strategy != "end":
            raise OutputError(
                f"save_trainable_only with push_to_hub needs hub_strategy='end', not "
                f"{strategy!r}: the other strategies push each checkpoint's full weights"
            )


def hub_id(args: TrainingArguments) -> str:
    """The repository ``Trainer`` pushes to (the user's namespace is added by the Hub)."""
    return args.hub_model_id or Path(args.output_dir).absolute().name


def resolve_checkpoint(args: TrainingArguments) -> str | None:
    """The checkpoint folder ``--resume_from_checkpoint`` asks for (None: a fresh run)."""
    value = args.resume_from_checkpoint
    if value is None or str(value).strip().lower() in ("", "false", "none"):
        return None
    out = Path(args.output_dir)
    if str(value).strip().lower() == "true":
        found = checkpoints(out)
        complete = [path for path in found if (path / "trainer_state.json").is_file()]
        if not complete:
            raise OutputError(
                f"resume_from_checkpoint=true, but output_dir {str(out)!r} holds no complete "
                f"{PREFIX_CHECKPOINT_DIR}-N folder to resume from"
            )
        if complete[-1] != found[-1]:
            logger.warning("%s has no trainer_state.json (a save cut short); resuming from %s",
                           found[-1], complete[-1])
        return str(complete[-1])
    path = Path(value)
    if not path.exists():
        raise OutputError(f"resume_from_checkpoint={value!r} does not exist")
    if not (path / "trainer_state.json").is_file():
        raise OutputError(
            f"resume_from_checkpoint={value!r} is not a checkpoint (no trainer_state.json); give "
            f"a {PREFIX_CHECKPOINT_DIR}-N folder, or true for the last one in output_dir"
        )
    return str(path)


def checkpoints(folder: Path) -> list[Path]:
    """``checkpoint-N`` folders in ``folder``, by step."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


class RunDir:
    """``output_dir`` for one run, as ``open_run_dir`` found it."""

    def __init__(self, path: Path, created: list[Path], checkpoint: str | None):
        self.path = path
        self.created = created  # directories that did not exist at the start, outermost first
        self.checkpoint = checkpoint

    def failed(self) -> None:
        """After a failed run: remove the empty directories this run made and temporary files."""
        remove_temporary_files(self.path)
        for top in self.created[:1]:
            for folder, _dirs, _files in os.walk(top, topdown=False):
                _rmdir_if_empty(Path(folder))
        for folder in reversed(self.created):
            _rmdir_if_empty(folder)


def open_run_dir(args: RunTrainingArguments) -> RunDir:
    """Resolve the resume and refuse a run that would mix with an earlier one (see the module
    docstring); with ``overwrite_output_dir``, remove the earlier run."""
    out = Path(args.output_dir)
    checkpoint = resolve_checkpoint(args)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output_dir {str(out)!r} is a file, not a folder")
    if out.is_dir() and _first_local_process():  # the others would race with its first writes
        remove_temporary_files(out)
        entries = sorted(os.listdir(out))
        if entries and checkpoint is None and not args.overwrite_output_dir:
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise OutputError(
                f"output_dir {str(out)!r} already holds a run ({shown}): pass "
                "--overwrite_output_dir true to replace it, or --resume_from_checkpoint true to "
                "continue it"
            )
    created = []
    probe = out.absolute()
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    created.reverse()
    if out.is_dir() and _first_local_process():
        if checkpoint is None and args.overwrite_output_dir:
            remove_earlier_run(out)
        (out / RESULTS).unlink(missing_ok=True)  # a stale success claim must not outlive a failure
    return RunDir(out, created, checkpoint)


def remove_earlier_run(out: Path) -> list[str]:
    """Remove what an earlier run of the launcher left at the top of ``out``; return the names."""
    removed = []
    for path in sorted(out.iterdir()):
        ours = path.name in RUN_FILES or any(path.match(p) for p in RUN_PATTERNS) or (
            path.name == MODEL_CARD and CARD_MARKER in path.read_text(errors="replace")
        )
        if not ours:
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path.name)
    if removed:
        logger.warning("overwrite_output_dir: removed the earlier run's %s", ", ".join(removed))
    return removed


def remove_temporary_files(out: Path) -> None:
    """Temporary files of ``write_json_atomic`` left by a process killed during the write."""
    if out.is_dir():
        for path in out.glob(".*.tmp"):
            path.unlink(missing_ok=True)



def _first_local_process() -> bool:
    """True in a single process and in the first process of each machine under a launcher."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def _rmdir_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        folder.rmdir()

