"""``FreezeTrainer``: a ``Trainer`` that freezes by policy, schedules it, and proves it.

``FreezeTrainer(model, args, ..., freeze_policy=..., freeze_options=...)`` takes every
``Trainer`` argument plus:

- ``freeze_policy``: a policy from ``get_policy``, a registered name, a
  ``{"name": ..., **options}`` dict, or None (train whatever requires grad when training starts).
- ``freeze_options``: a ``FreezeOptions`` (``freeze_policies.training.options``; a mapping of its
  fields works too), every other option of freezing, validated once:

  - ``freeze_mode``: ``"requires_grad"`` (default), ``"zero_lr"`` or ``"zero_grad"`` (see
    ``freeze_policies.training.modes``; the last two accept fixed policies only).
  - ``layer_lr_decay`` (0 < x <= 1, default 1) and ``head_lr_multiplier`` (> 0, default 1):
    layer-wise learning rates as optimizer groups (see ``freeze_policies.training.optim``).
  - ``audit``: ``"raise"`` (default), ``"log"`` or ``"off"``: what the frozen-weights audit does
    when a frozen weight moved.
  - ``cache_frozen_prefix`` (default False): cache the output of the frozen embeddings + lowest
    frozen blocks per example and train the top from it
    (``freeze_policies.training.prefix_cache``); the prefix runs in eval mode (no dropout there).
    ``prefix_cache_dir`` spills it to disk. ``frozen_prefix_eval`` gives the same eval-mode prefix
    without caching: the uncached run a cached one matches.
  - ``frozen_dtype``: ``"bfloat16"``, ``"float16"`` or None (default: dtypes as loaded). Frozen
    matrices are stored in that dtype and trainable parameters in float32; a parameter a
    schedule opens is upcast (from its low-precision value), one it closes is downcast. Needs
    ``bf16=True`` or ``fp16=True``; see ``freeze_policies.training.precision``.
    ``trainer.dtype_moves`` lists the moves.

  ``FreezeOptions`` is the one way to give them. Each is still accepted as a keyword argument of
  ``FreezeTrainer`` itself (``FreezeTrainer(..., freeze_mode="zero_lr")``), as before
  ``FreezeOptions`` existed, but deprecated: the keyword builds the ``FreezeOptions`` and a
  ``FutureWarning`` (once per process and keyword) names the replacement. Giving an option both
  ways is an error.

What it does on top of ``Trainer``:

- At construction, before any optimizer exists, it validates everything (bad values raise
  ``FreezePolicyError``), applies stage 0 of the policy, and adds a ``FreezeScheduleCallback``
  that applies later stages, restores the stage on resume and runs the audit. Under ``zero_lr``
  and ``zero_grad`` the callback makes every parameter require grad for the duration of
  ``train()`` and sets the policy's ``requires_grad`` back at the end.
- ``create_optimizer`` builds the groups with ``optim.build_param_groups`` from ``Trainer``'s own
  optimizer class and keyword arguments (so ``optim=`` keeps working): exactly the parameters the
  policy will ever train, one group per (anatomy group, decay or not), no decay for biases and
  norms, layer-wise learning rates. An optimizer passed in ``optimizers=`` is used as given (and
  checked by the callback).
- Under DDP, ``training_step`` re-wraps the model in a new ``DistributedDataParallel`` whenever
  the trainable set changes, so every rank all-reduces exactly what trains; FSDP / DeepSpeed
  combinations that cannot train correctly are refused before training
  (``freeze_policies.distributed.guards``). Under FSDP2 schedules train without re-wrapping,
  and its checkpoints keep the optimizer state of closed blocks through a resume
  (``freeze_policies.distributed.fsdp2``).
- ``train`` returns the audit in ``TrainOutput.metrics`` and ``trainer.frozen_audit`` (an
  ``AuditResult``); ``trainer.state.log_history`` has it too. ``freeze_metrics()`` gathers what
  a report needs (trainable counts, audit, cost figures, prefix-cache figures) in one dict.
- ``trainer.anatomy`` is the anatomy of the model, traced once per run (the policy's, with its
  ``blocks=``) and handed to the optimizer, the cache and the guards; pass it to ``summarize``
  and ``predict_cost`` instead of tracing again. A caller that traced it already (to check the
  policy before building the trainer, as ``recipes/run.py`` does) passes it as
  ``freeze_anatomy=`` (the policy's anatomy of ``model``: ``policy.anatomy(model)``) and it is
  not traced again.
- ``evaluate`` leaves the random generators (Python, NumPy, torch CPU and CUDA) as it found them:
  each DataLoader iterator draws its base seed from the global torch generator, so a plain
  ``Trainer``'s evaluations during training shift every later dropout mask and shuffle, and a
  checkpoint saved right before an evaluation (an epoch end under ``eval_strategy="epoch"``)
  resumes on another random stream than the run that was not interrupted. Here training draws the
  same numbers whether or not, and how often, it evaluates, and such a resume is exact.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch
from torch import nn
from transformers import Trainer

from freeze_policies.distributed.ddp import DDPRewrapper
from freeze_policies.distributed.fsdp2 import is_fsdp2, loading_into, optimizer_state_visible
from freeze_policies.distributed.guards import check_trainer
from freeze_policies.errors import FreezePolicyError
from freeze_policies.policies.trainable import check_not_peft, set_trainable
from freeze_policies.structure.discover import Anatomy, anatomy
from freeze_policies.training.audit import AuditResult
from freeze_policies.training.callbacks import FreezeScheduleCallback, find_freeze_callback
from freeze_policies.training.modes import check_scheduler_type
from freeze_policies.training.optim import create_optimizer
from freeze_policies.training.options import (
    FreezeOptions,
    freeze_options_from,
    warn_option_keywords,
)
from freeze_policies.training.precision import DtypeMove, check_precision_options, place, upcast
from freeze_policies.training.prefix_cache import PrefixCache


class FreezeTrainer(Trainer):
    """``Trainer`` with a freeze policy, its schedule, layer-wise learning rates and an audit."""

    def __init__(
        self,
        *args,
        freeze_policy=None,
        freeze_options: FreezeOptions | dict | None = None,
        freeze_mode: str | None = None,
        layer_lr_decay: float | None = None,
        head_lr_multiplier: float | None = None,
        audit: str | None = None,
        cache_frozen_prefix: bool | None = None,
        prefix_cache_dir: str | None = None,
        frozen_prefix_eval: bool | None = None,
        frozen_dtype=None,
        freeze_anatomy: Anatomy | None = None,
        **kwargs,
    ):
        # Everything that can be checked without the Trainer is checked before it is built:
        # the options once, in FreezeOptions; the options against the policy in the callback.
        keywords = dict(
            freeze_mode=freeze_mode,
            layer_lr_decay=layer_lr_decay,
            head_lr_multiplier=head_lr_multiplier,
            audit=audit,
            cache_frozen_prefix=cache_frozen_prefix,
            prefix_cache_dir=prefix_cache_dir,
            frozen_prefix_eval=frozen_prefix_eval,
            frozen_dtype=frozen_dtype,
        )
        warn_option_keywords("FreezeTrainer", **keywords)
        options = freeze_options_from(freeze_options, **keywords)
        callback = FreezeScheduleCallback(freeze_policy, freeze_options=options)
        model = kwargs.get("model", args[0] if args else None)
        if model is not None:
            check_not_peft(model, callback.policy)

        super().__init__(*args, **kwargs)
        check_scheduler_type(options.freeze_mode, self.args.lr_scheduler_type)
        if find_freeze_callback(self) is not None:
            raise FreezePolicyError(
                "FreezeTrainer adds its own FreezeScheduleCallback; pass freeze_policy= instead of "
                "a FreezeScheduleCallback in callbacks="
            )
        sharding = "FSDP" if self.is_fsdp_enabled else None
        sharding = "DeepSpeed" if self.is_deepspeed_enabled else sharding
        # autocast as accelerate runs it: fp16 on CPU gets none (accelerate's native_amp=False)
        precision = self.accelerator.mixed_precision if self.accelerator.native_amp else None
        check_precision_options(
            options.torch_frozen_dtype, freeze_mode=options.freeze_mode,
            mixed_precision=precision, sharding=sharding,
        )
        self.freeze_options = options
        self.dtype_moves: list[DtypeMove] = []
        self._end_figures: dict = {}
        self._resuming = False  # True while train() loads a checkpoint (see train)
        # (model, its anatomy): the caller's, when it traced it already (freeze_anatomy=)
        self._anatomy: tuple[nn.Module, Anatomy] | None = (
            (model, freeze_anatomy) if freeze_anatomy is not None and model is not None else None
        )
        callback.after_set_trainable = self._follow_dtypes
        self.frozen_audit: AuditResult | None = None
        self.add_callback(callback)
        self.prefix_cache = None
        if self.model is not None:
            self._freeze_before_optimizer(self.model)
        if options.uses_prefix:
            self.prefix_cache = PrefixCache(
                self.model,
                self.freeze_callback.anat,
                directory=options.prefix_cache_dir,
                replay=options.cache_frozen_prefix,
                wait_for_prefix=bool(getattr(self.freeze_callback.policy, "adaptive", False)),
                owner=self.args.output_dir,
            )

    # the options, as attributes of the trainer (read-only: the options object is the record)
    @property
    def freeze_mode(self) -> str:
        return self.freeze_options.freeze_mode

    @property
    def layer_lr_decay(self) -> float:
        return self.freeze_options.layer_lr_decay

    @property
    def head_lr_multiplier(self) -> float:
        return self.freeze_options.head_lr_multiplier

    @property
    def frozen_dtype(self) -> torch.dtype | None:
        return self.freeze_options.torch_frozen_dtype

    @property
    def anatomy(self) -> Anatomy:
        """The anatomy of the model: the policy's (traced when the policy was bound), or, without
        a policy, ``anatomy(model)`` traced on first use; once per model either way."""
        model = self.freeze_callback.bound_model or self.model
        if self.freeze_callback.anat is not None and model is self.freeze_callback.bound_model:
            return self.freeze_callback.anat
        if self._anatomy is None or self._anatomy[0] is not model:
            self._anatomy = (model, anatomy(model))
        return self._anatomy[1]

    @property
    def freeze_callback(self) -> FreezeScheduleCallback:
        """The callback that applies the schedule and the audit."""
        return find_freeze_callback(self)

    @property
    def freeze_policy(self):
        return self.freeze_callback.policy

    @property
    def cost_figures(self) -> dict:
        """``optimizer_state_bytes``, ``gradient_bytes`` and ``parameter_bytes`` of the last
        ``train`` ({} before)."""
        metrics = {**self.freeze_callback.audit_metrics, **self._end_figures}
        keys = ("optimizer_state_bytes", "gradient_bytes", "parameter_bytes")
        return {k: metrics[k] for k in keys if k in metrics}

    def freeze_metrics(self) -> dict:
        """What a report needs about the freezing of this run, as plain values.

        - ``trainable_params``: the parameters the policy trains at stage 0 (under ``zero_lr`` /
          ``zero_grad`` every parameter requires grad, but only these are updated); without a
          policy, those that require grad now.
        - ``trainable_params_max``: the parameters some stage of the policy trains.
        - After ``train``: the audit (``frozen_audit_passed``, ``frozen_audit_checked``,
          ``frozen_audit_moved``, ``frozen_audit_max_abs_diff``) and the cost figures
          (``optimizer_state_bytes``, ``gradient_bytes``, ``parameter_bytes``).
        - ``prefix_cache``: with ``cache_frozen_prefix``, the cache's counters (``hits``,
          ``records``, ``rebuilds``, ``record_seconds``), its ``bytes`` and ``depth``; else None.
        """
        callback = self.freeze_callback
        sizes = {name: p.numel() for name, p in self.model.named_parameters()}
        if callback.policy is None:
            now = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            counts = {"trainable_params": now, "trainable_params_max": now}
        else:
            counts = {
                "trainable_params": sum(sizes[n] for n in callback.trainable_at(0)),
                "trainable_params_max": sum(sizes[n] for n in callback.ever_trainable),
            }
        cache = self.prefix_cache
        cache_figures = None
        if cache is not None and cache.replay:
            cache_figures = {**cache.stats, "bytes": cache.nbytes, "depth": cache.depth}
        return {
            **counts,
            **callback.audit_metrics,
            **self._end_figures,
            "prefix_cache": cache_figures,
        }

    def _freeze_before_optimizer(self, model) -> None:
        """Bind the policy to ``model`` (validating it) and set the state before the optimizer."""
        callback = self.freeze_callback
        given = self._anatomy[1] if self._anatomy and self._anatomy[0] is model else None
        callback.bind(model, given)
        if callback.policy is not None:  # (zero_lr / zero_grad open the rest in train())
            set_trainable(model, callback.trainable_at(0))
        check_trainer(self)  # FSDP / DeepSpeed / DDP guards (freeze_policies.distributed.guards)
        if self._resuming:  # a rebuilt callback re-binds here: keep the checkpoint's values
            self._upcast_held(model)
        else:  # before the optimizer exists: its state is made in float32
            self._follow_dtypes(model)

    def _follow_dtypes(self, model) -> None:
        """Store each parameter in its dtype under ``frozen_dtype`` (``precision.place``); the
        callback calls this after every change of the trainable set, before its audit snapshot."""
        if self.frozen_dtype is None:
            return
        step = self.state.global_step if self.state is not None else 0
        self.dtype_moves += place(model, self.frozen_dtype, optimizer=self.optimizer, step=step)

    def _upcast_held(self, model) -> None:
        """Make every parameter the optimizer holds float32, before a checkpoint loads into it."""
        if self.frozen_dtype is None:
            return
        callback = self.freeze_callback
        callback.bind(model)
        held = callback.ever_trainable
        if held is None:
            held = [n for n, p in model.named_parameters() if p.requires_grad]
        self.dtype_moves += upcast(model, held, step=self.state.global_step)

    def create_optimizer(self, model=None):
        """Build the optimizer from ``optim.build_param_groups`` (see the module docstring)."""
        if self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        callback = self.freeze_callback
        if opt_model is not callback.bound_model:  # model_init built a new model
            self._freeze_before_optimizer(opt_model)
        anat = callback.anat
        decay = set(self.get_decay_parameter_names(opt_model))  # a subclass may override it
        if anat is not None:
            decay -= set(anat.norms)
        elif self.layer_lr_decay != 1.0 or self.head_lr_multiplier != 1.0:
            anat = self.anatomy  # layer-wise rates need the blocks; traced once, kept
        self.optimizer = create_optimizer(
            opt_model,
            self.args,
            callback.policy,
            freeze_options=self.freeze_options,
            anat=anat,
            cls_and_kwargs=getattr(self, "optimizer_cls_and_kwargs", None),
            decay_names=decay,
        )
        return self.optimizer

    def compute_loss(self, model, inputs, *args, **kwargs):
        """With the frozen-prefix cache on, training forwards replay or record the prefix."""
        cache = self.prefix_cache
        if cache is None or not model.training:
            return super().compute_loss(model, inputs, *args, **kwargs)
        cache.refresh()  # a schedule may have opened part of the prefix
        with cache.step(inputs):
            return super().compute_loss(model, inputs, *args, **kwargs)

    def train(self, *args, **kwargs):
        """``Trainer.train``; the audit lands in ``metrics``, ``log_history`` and
        ``self.frozen_audit`` (also when it raises ``FrozenWeightsMovedError``).

        With ``frozen_dtype``, a resume first upcasts every parameter the optimizer will hold,
        so that the checkpoint's float32 weights and optimizer moments load exactly (loading
        casts them to the live parameter's dtype); the restored stage moves the frozen ones
        down again (also when Trainer rebuilds the callback from the checkpoint)."""
        resume = kwargs.get("resume_from_checkpoint", args[0] if args else None)
        self._resuming = bool(resume)
        if self._resuming:  # another policy or freeze mode: one line, not torch's optimizer error
            self._check_resume(resume)
        if self._resuming and self.model is not None:
            self._upcast_held(self.model)
        try:
            output = super().train(*args, **kwargs)
        finally:
            self._resuming = False
            if self.prefix_cache is not None:  # its file goes, on success, error or interrupt
                self.prefix_cache.release()
            callback = self.freeze_callback
            self.frozen_audit = callback.audit_result
            if self.model is not None:  # stored bytes: frozen_dtype shows here
                self._end_figures = {"parameter_bytes": sum(
                    p.numel() * p.element_size() for p in self.model.parameters()
                )}
        output.metrics.update({**callback.audit_metrics, **self._end_figures})
        return output

    def _check_resume(self, resume) -> None:
        """``resume.check_checkpoint_run`` on the checkpoint ``train`` is about to load."""
        from transformers.trainer_utils import get_last_checkpoint

        from freeze_policies.policies.registry import policy_spec
        from freeze_policies.training.resume import check_checkpoint_run

        folder = (get_last_checkpoint(self.args.output_dir) if resume is True
                  and os.path.isdir(self.args.output_dir) else resume)
        if isinstance(folder, (str, os.PathLike)) and os.path.isdir(folder):
            check_checkpoint_run(folder, policy_spec=policy_spec(self.freeze_callback.policy),
                                 freeze_mode=self.freeze_mode)

    def evaluate(self, *args, **kwargs):
        """``Trainer.evaluate``, with the random generators restored afterwards (see the module
        docstring): evaluation never moves training's random stream."""
        with preserved_rng():
            return super().evaluate(*args, **kwargs)

    # -- FSDP2: checkpoints keep the optimizer state of closed blocks (distributed.fsdp2) -------
    def _fsdp2_parts(self):
        """(model, optimizer) when FSDP2 shards the model, else None."""
        if not self.is_fsdp_enabled or self.optimizer is None or not is_fsdp2(self.model):
            return None
        return self.model, getattr(self.optimizer, "optimizer", self.optimizer)

    def _save_optimizer_and_scheduler(self, output_dir):
        parts = self._fsdp2_parts()
        with optimizer_state_visible(*parts) if parts else contextlib.nullcontext():
            return super()._save_optimizer_and_scheduler(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint):
        parts = self._fsdp2_parts()
        saved = f"{checkpoint}/optimizer_0"  # accelerate's DCP folder of optimizer 0
        with loading_into(*parts, saved) if parts and checkpoint else contextlib.nullcontext():
            return super()._load_optimizer_and_scheduler(checkpoint)

    # -- DDP: keep the wrapper's registered parameters equal to the trainable ones -------------
    @property
    def ddp_rewrapper(self) -> DDPRewrapper:
        """Re-wraps the model in DDP when a schedule changes the trainable set (see
        ``freeze_policies.distributed.guards``); ``ddp_rewrapper.events`` lists the re-wraps."""
        if getattr(self, "_ddp_rewrapper", None) is None:
            self._ddp_rewrapper = DDPRewrapper()
        return self._ddp_rewrapper

    def _wrap_model(self, model, training=True, dataloader=None):
        if training:  # Accelerator.prepare wraps right after this: record what DDP registers
            self.ddp_rewrapper.before_prepare(self.accelerator.unwrap_model(model))
            # a checkpoint's callback state may have replaced the callback (Trainer rebuilds it
            # with restore_callback_states_from_checkpoint=True): hand it the dtype moves again
            self.freeze_callback.after_set_trainable = self._follow_dtypes
        return super()._wrap_model(model, training=training, dataloader=dataloader)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """``Trainer.training_step`` on a DDP wrapper that all-reduces exactly the parameters
        that require grad now: a new one after a stage change, or after zero_lr / zero_grad made
        every parameter require grad (the loop passes the wrapper it built first)."""
        if self.frozen_dtype is not None:  # dtype moves before DDP registers the parameters
            self._follow_dtypes(self.accelerator.unwrap_model(model))
        wrapper = self.ddp_rewrapper.current(model, self.accelerator, self.state.global_step)
        if wrapper is not model:
            self.model_wrapped = model = wrapper
        return super().training_step(model, inputs, num_items_in_batch)


@contextlib.contextmanager
def preserved_rng():
    """Run the block, then set the Python, NumPy, torch CPU and CUDA generators back."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
