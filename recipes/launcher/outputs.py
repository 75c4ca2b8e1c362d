"""What ``recipes/run.py`` leaves in ``output_dir`` after training (``RunOutputs``).

Unless ``--save_model false``: full and freeze runs save the whole model with its tokenizer
(``Trainer.save_model``: ``from_pretrained(output_dir)`` loads it); PEFT runs save the adapter
(``PeftModel.from_pretrained``) and the tokenizer; freeze runs with ``--save_trainable_only true``
save a freeze delta instead of the whole model (``freeze_policies.load_freeze_delta(output_dir)``
loads it onto the base). A model card (``README.md``, ``recipes.launcher.model_card``) says what was
trained, how, with what result, the command, and how to load it. ``--push_to_hub true`` pushes
``output_dir`` with ``Trainer.push_to_hub``, whose final save and model card are these
(``RunTrainer``).

``results.json`` is written atomically (a temporary file renamed into place, removed if the
write fails) with the usual file mode (0666 less the umask: 0644 under the common 022). The
checks made before a run starts are ``recipes.launcher.run_dir``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from freeze_policies import FreezeTrainer
from freeze_policies.policies.registry import load_yaml
from freeze_policies.training.delta import DELTA_WEIGHTS, save_freeze_delta
from recipes.launcher.model_card import model_card
from recipes.launcher.results import RunResults
from recipes.launcher.run_dir import MODEL_CARD


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
    (Trainer's own) then saves and uploads exactly what ``RunOutputs.save_weights`` and
    ``RunOutputs.write_card`` write."""

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
    auto_class: str  # the transformers class that loads it (the task's, recipes.launcher.tasks)
    trainable_only: bool
    results: RunResults | None = None  # set before the card is written
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


def _usual_mode(path: Path) -> None:
    """The mode a plain ``open`` would give a new file: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)



# -- what results.json records besides the metrics ----------------------------------------------


def run_record(trainer) -> dict:
    """``results.json``'s keys about how the run went and where it ran:

    - ``schedule_events``: every stage change and ``auto_freeze`` decision of a scheduled policy,
      as printed on the console (``freeze_policies.training.schedule_events``): ``step``,
      ``schedule_event`` ("stage" / "auto_freeze"), the groups it ``opened`` / ``closed`` /
      ``froze`` (``trains`` at the start), ``trainable_share``; [] for a fixed policy.
    - ``world_size``: the number of training processes.
    - ``accelerate``: how the run was launched: ``launcher`` ("accelerate launch" or "python"),
      the ``config_file`` given to ``accelerate launch`` (or its default config) and its
      ``config`` (the YAML's mapping), ``distributed_type`` and ``mixed_precision`` as
      Accelerate saw them.
    """
    from freeze_policies.training.schedule_events import schedule_events

    return {
        "schedule_events": schedule_events(trainer.state.log_history),
        "world_size": trainer.args.world_size,
        "accelerate": accelerate_record(trainer),
    }


def accelerate_record(trainer) -> dict:
    """See ``run_record``."""
    from recipes.launcher.common import under_accelerate_launch

    state = trainer.accelerator.state
    record = {
        "launcher": "accelerate launch" if under_accelerate_launch() else "python",
        "distributed_type": str(getattr(state.distributed_type, "value", state.distributed_type)),
        "mixed_precision": str(state.mixed_precision),
        "num_processes": state.num_processes,
        "config_file": None,
        "config": None,
    }
    if record["launcher"] == "accelerate launch":
        path = launch_config_file()
        if path is not None:
            import yaml

            record["config_file"] = str(path)
            try:
                record["config"] = load_yaml(Path(path).read_text())
            except (OSError, yaml.YAMLError):
                record["config"] = None
    return record


def launch_config_file() -> Path | None:
    """The config file ``accelerate launch`` ran with: ``--config_file`` in the launching
    process's command line (the parent of every worker), else accelerate's default config when
    it exists. None when neither is known."""
    try:
        import psutil

        argv = psutil.Process(os.getppid()).cmdline()
    except Exception:  # psutil missing or the parent gone: unknown, not an error
        argv = []
    for index, arg in enumerate(argv):
        if arg == "--config_file" and index + 1 < len(argv):
            return Path(argv[index + 1]).absolute()
        if arg.startswith("--config_file="):
            return Path(arg.split("=", 1)[1]).absolute()
    try:
        from accelerate.commands.config import default_config_file
    except ImportError:
        return None
    return Path(default_config_file) if Path(default_config_file).is_file() else None
