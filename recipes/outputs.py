"""What ``recipes/run.py`` leaves in ``output_dir``, and the checks made before a run starts.

Before any model is loaded (``open_run_dir``):

- ``--resume_from_checkpoint`` is resolved as ``run_glue.py`` does: ``true`` takes the last
  ``checkpoint-N`` in ``output_dir`` (the last complete one: a checkpoint without its
  ``trainer_state.json``, cut short by a kill during the save, is skipped with a warning); a path
  must be a checkpoint folder. Anything else is a one-line error.
- An ``output_dir`` that is not empty is refused unless ``--overwrite_output_dir true`` (the
  earlier run's ``checkpoint-*`` folders, ``results.json``, weights, delta, adapter, config and
  model card are then removed, so two runs never mix) or a resume is asked for.
- Writability is checked by ``recipes.arguments.check_output_dir`` while the arguments are parsed;
  nothing is created before training. The directories of ``output_dir`` that did not exist when
  the run started are removed again if the run fails while they are empty (``RunDir.failed``),
  and so are the temporary files of an interrupted write.

After training (``save_outputs``), unless ``--save_model false``: full and freeze runs save the
whole model with its tokenizer (``Trainer.save_model``: ``from_pretrained(output_dir)`` loads
it); PEFT runs save the adapter (``PeftModel.from_pretrained``) and the tokenizer; freeze runs
with ``--save_trainable_only true`` save a freeze delta instead of the whole model
(``freeze_policies.load_freeze_delta(output_dir)`` loads it onto the base). A model card
(``README.md``) says what was trained, how, with what result, the command, and how to load it.
``--push_to_hub true`` pushes ``output_dir`` with ``Trainer.push_to_hub``, whose final save and
model card are these (``RunTrainer``).

``results.json`` is written atomically (a temporary file renamed into place, removed if the
write fails) with the usual file mode (0666 less the umask: 0644 under the common 022).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from transformers import Seq2SeqTrainingArguments, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from freeze_policies import FreezeTrainer
from freeze_policies.delta import DELTA_CONFIG, DELTA_WEIGHTS, save_freeze_delta

logger = logging.getLogger("recipes.run")

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
    options (``recipes.parsing``)."""

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


def _usual_mode(path: Path) -> None:
    """The mode a plain ``open`` would give a new file: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _first_local_process() -> bool:
    """True in a single process and in the first process of each machine under a launcher."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def _rmdir_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        folder.rmdir()


# -- after training ---------------------------------------------------------------------------


def total_params(model) -> int:
    """Every parameter once: for a PEFT model, each base parameter once plus the adapter's; the
    trainable copies PEFT makes of ``modules_to_save`` stand in for the originals, counted once."""
    return sum(p.numel() for name, p in model.named_parameters() if ".modules_to_save." not in name)


def trained_names(trainer) -> frozenset[str]:
    """The parameters some stage reached in training opened (a schedule cut short by
    ``max_steps`` never trains its later stages), from the stage changes in the log history."""
    callback = trainer.freeze_callback
    stages = {e["freeze_stage"] for e in trainer.state.log_history if "freeze_stage" in e}
    if not stages:
        return callback.ever_trainable
    return frozenset().union(*(callback.trainable_at(stage) for stage in stages))


class RunTrainer(FreezeTrainer):
    """``FreezeTrainer`` whose final save and model card are the launcher's: ``push_to_hub``
    (Trainer's own) then saves and uploads exactly what ``save_outputs`` writes."""

    run_outputs: RunOutputs | None = None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        final = output_dir is None or Path(output_dir) == Path(self.args.output_dir)
        if self.run_outputs is not None and final:
            self.run_outputs.save_weights(self)
        else:
            super().save_model(output_dir, _internal_call)

    def create_model_card(self, **kwargs) -> None:
        if self.run_outputs is None:
            return super().create_model_card(**kwargs)
        if self.is_world_process_zero():
            self.run_outputs.write_card()


@dataclass
class RunOutputs:
    """What the launcher saves at the end of a run (see the module docstring)."""

    output_dir: Path
    method: str
    base_model: str  # as given: an alias, a folder or a hub id
    base_path: str  # what from_pretrained loads it from
    task: str
    trainable_only: bool
    results: dict = field(default_factory=dict)
    label_config: dict = field(default_factory=dict)
    saved: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if self.method == "peft":
            return "adapter"
        return "delta" if self.trainable_only else "model"

    def save_weights(self, trainer) -> None:
        """Model, adapter or delta, and the tokenizer."""
        if self.kind == "delta":
            callback = trainer.freeze_callback
            if trainer.is_world_process_zero():
                save_freeze_delta(trainer.model, self.output_dir, trained_names(trainer),
                                  base_model_name_or_path=self.base_path, policy=callback.policy)
                if trainer.processing_class is not None:
                    trainer.processing_class.save_pretrained(self.output_dir)
        else:  # Trainer's own save: the whole model, or a PeftModel's adapter; the tokenizer
            FreezeTrainer.save_model(trainer, str(self.output_dir))
        weights = {"model": ("model*.safetensors", "pytorch_model*.bin"),
                   "adapter": ("adapter_model.safetensors",), "delta": (DELTA_WEIGHTS,)}[self.kind]
        files = sorted({p.name for pattern in weights for p in self.output_dir.glob(pattern)})
        if trainer.is_world_process_zero():  # safetensors writes 0600; give the usual mode
            for name in files:
                _usual_mode(self.output_dir / name)
        self.saved = {"kind": self.kind, "weights": files,
                      "weights_bytes": sum((self.output_dir / f).stat().st_size for f in files)}

    def write_card(self) -> None:
        text = model_card(self)
        tmp = self.output_dir / f".{MODEL_CARD}.tmp"
        try:
            tmp.write_text(text)
            os.replace(tmp, self.output_dir / MODEL_CARD)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _loading_code(outputs: RunOutputs) -> str:
    folder = str(outputs.output_dir)
    auto = "AutoModelForSequenceClassification" if outputs.task == "classification" \
        else "AutoModelForCausalLM"
    if outputs.kind == "model":
        return (f"from transformers import AutoTokenizer, {auto}\n\n"
                f"model = {auto}.from_pretrained({folder!r})\n"
                f"tokenizer = AutoTokenizer.from_pretrained({folder!r})\n")
    if outputs.kind == "delta":
        return ("from transformers import AutoTokenizer\n\n"
                "from freeze_policies import load_freeze_delta\n\n"
                f"model = load_freeze_delta({folder!r})  # the base, then the trained tensors\n"
                f"tokenizer = AutoTokenizer.from_pretrained({folder!r})\n")
    extra = "".join(f", {key}={value!r}" for key, value in outputs.label_config.items())
    return (f"from peft import PeftModel\nfrom transformers import AutoTokenizer, {auto}\n\n"
            f"base = {auto}.from_pretrained({outputs.base_path!r}{extra})\n"
            f"model = PeftModel.from_pretrained(base, {folder!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({folder!r})\n")


def model_card(outputs: RunOutputs) -> str:
    """The README.md of a run folder: YAML metadata, what was trained, results, command, loading."""
    r = outputs.results
    method = r["method"]
    if method == "freeze":
        what = f"freeze policy `{r['policy']}`"
        if r.get("policy_options"):
            what += f" with options `{json.dumps(r['policy_options'], sort_keys=True)}`"
        what += f", freeze mode `{r['freeze_mode']}`"
    elif method == "peft":
        what = f"PEFT `{r['peft_method']}`"
        if r.get("peft_options"):
            what += f" with options `{json.dumps(r['peft_options'], sort_keys=True)}`"
    else:
        what = "full fine-tuning"
    tags = list(dict.fromkeys(["freeze-policies", method, r.get("policy") or
                               r.get("peft_method") or "full"]))
    share = r["trainable_params"] / r["total_params"] if r["total_params"] else 0.0
    metrics = {k: v for k, v in r.items()
               if k.startswith(("eval_", "test_")) and isinstance(v, (int, float))}
    saved = {"model": "the whole model and its tokenizer",
             "adapter": "the PEFT adapter (with the trained head) and the tokenizer",
             "delta": "a freeze delta: only the parameters that trained, plus the base model's "
                      "path, and the tokenizer"}[outputs.kind]
    lines = [
        "---",
        f"base_model: {json.dumps(outputs.base_path)}",
        f"library_name: {'peft' if outputs.kind == 'adapter' else 'transformers'}",
        "tags:",
        *[f"- {json.dumps(tag)}" for tag in tags],
        "---",
        CARD_MARKER,
        "",
        f"# {outputs.output_dir.name}",
        "",
        f"`{outputs.base_model}` fine-tuned on `{r['dataset']}` ({r['task']}) with {what}, by "
        "`recipes/run.py` of freeze-policies.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{outputs.base_model}`" + (
            f" (`{outputs.base_path}`)" if outputs.base_path != outputs.base_model else "") + " |",
        f"| method | {what} |",
        f"| trainable parameters | {r['trainable_params']:,} of {r['total_params']:,} "
        f"({share:.2%})" + (f"; {r['trainable_params_max']:,} over all stages"
                            if r.get("trainable_params_max", r["trainable_params"])
                            != r["trainable_params"] else "") + " |",
        f"| training | seed {r['seed']}, learning rate {r['learning_rate']:g}, "
        f"{r['max_steps']} steps |",
        f"| saved here | {saved} |",
        "",
        "## Results",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items())],
        "",
        "## Command",
        "",
        "```bash",
        r["command"],
        "```",
        "",
        "## Loading",
        "",
        "```python",
        _loading_code(outputs).rstrip("\n"),
        "```",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(r.get("versions", {}).items())),
        "",
    ]
    return "\n".join(lines)
