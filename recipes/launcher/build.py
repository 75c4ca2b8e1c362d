"""Building a run from its arguments: the data splits, the model and tokenizer, the PEFT wrapper
or the freeze policy (picked by a budget when one is given), and the trainer.

Every input error surfaces in ``prepare``, before training: the seed is set before anything random
is built (the classification head, LoRA's A matrices, prompt embeddings), since ``Trainer`` seeds
only in its ``__init__``, after the model exists; a policy is checked against the model before
any output is made.

One anatomy per run: the model is traced once, here, with the policy's ``blocks=`` (the budget's
choice reuses it: its candidates are ``bottom_n`` without ``blocks=``), and the trace is handed to
``FreezeTrainer`` (``freeze_anatomy=``), whose ``trainer.anatomy`` the launcher's summary and cost
preview read. Without a policy ``trainer.anatomy`` traces the model on first use, once. (A PEFT
baseline that saves the classification head also traces the base model before wrapping it, to
find the head: the wrapped model's anatomy is another.)
"""

from __future__ import annotations

from recipes.launcher.arguments import choice
from recipes.launcher.peft_methods import build_peft_model


def load_data(model_args, data_args):
    """(splits, label names) for a task with labels; (splits, None) otherwise (the task's entry
    in ``recipes.launcher.tasks``)."""
    from recipes.launcher.tasks import get_task

    return get_task(model_args.task).load_data(model_args, data_args)


def prepare(model_args, data_args, method_args, training_args):
    """Data, model, method and trainer; every input error surfaces here, before training."""
    from transformers import set_seed

    from freeze_policies import anatomy, get_policy
    from recipes.launcher import models
    from recipes.launcher.tasks import TASKS, check_model_task

    choice("task", model_args.task, TASKS)
    task = TASKS[model_args.task]
    # Seed before anything random is built (the classification head, LoRA's A matrices, prompt
    # embeddings): Trainer seeds only in its __init__, after the model exists.
    set_seed(training_args.seed, deterministic=training_args.full_determinism)
    policy = (
        get_policy(method_args.policy, **method_args.policy_options)
        if method_args.method == "freeze" and method_args.policy
        else None
    )
    # a model that cannot do the task is refused from its config, before the data loads
    check_model_task(model_args.model_name_or_path,
                     models.resolve_model_path(model_args.model_name_or_path,
                                               model_args.model_cache_dir), model_args.task)
    splits, label_names = load_data(model_args, data_args)
    model, tokenizer = models.load_model_and_tokenizer(
        model_args.model_name_or_path,
        model_args.task,
        label_names=label_names,
        cache_dir=model_args.model_cache_dir,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    tokenized, collator = task.prepare_data(splits, tokenizer, model, model_args, data_args)
    if method_args.method == "peft":
        model = build_peft_model(model, model_args.task, method_args.peft_method,
                                 method_args.peft_options)
    budget = None
    traced = None  # the run's one anatomy (see the module docstring)
    if method_args.budget_step_ratio is not None or method_args.budget_memory_gb is not None:
        traced = anatomy(model)
        budget = choose_by_budget(model, tokenized["train"], collator, model_args, method_args,
                                  training_args, traced)
        policy = budget.policy  # None: full fine-tuning fits the budget
        # report what runs: bottom_n with the chosen n, or full fine-tuning
        method_args.method = "freeze" if policy is not None else "full"
        method_args.policy = policy.name if policy is not None else None
        method_args.policy_options = policy.options() if policy is not None else {}
    if policy is not None:  # check the policy against this model before any output is made
        if traced is None or policy.blocks is not None:
            traced = policy.anatomy(model)
        policy.trainable_names(traced)
    trainer = task.trainer_class()(  # a RunTrainer (recipes.launcher.outputs)
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=task.make_compute_metrics(),
        freeze_policy=policy,
        freeze_options=method_args.freeze_options,
        freeze_anatomy=traced,
    )
    if task.per_batch_loss:  # see Task.per_batch_loss (classification)
        trainer.model_accepts_loss_kwargs = False
    trainer.budget_choice = budget
    return trainer, tokenized


def choose_by_budget(model, train, collator, model_args, method_args, training_args, anat=None):
    """bottom_n picked by ``freeze_policies.costs.budget`` from the budget flags (rank 0 prints)."""
    from freeze_policies.costs.budget import choose_frozen_depth
    from recipes.launcher.arguments import BUDGET_FLAGS

    batch = None
    if method_args.budget_calibration_steps > 0:
        rows = [train[i] for i in range(min(len(train), training_args.per_device_train_batch_size))]
        batch = collator(rows)
    gib = method_args.budget_memory_gb
    choice = choose_frozen_depth(
        model,
        max_step_ratio=method_args.budget_step_ratio,
        max_memory_bytes=int(gib * 2**30) if gib is not None else None,
        seq_len=model_args.max_length,
        batch_size=training_args.per_device_train_batch_size,
        calibrate=batch,
        calibration_steps=method_args.budget_calibration_steps,
        stack=method_args.budget_stack,
        names=BUDGET_FLAGS,
        shown={"max_step_ratio": f"--budget_step_ratio {method_args.budget_step_ratio}",
               "max_memory_bytes": f"--budget_memory_gb {gib}"},
        anat=anat,
    )
    if training_args.process_index == 0:
        print(f"\n{choice}\n", flush=True)
    return choice
