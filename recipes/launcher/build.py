"""Building a run from its arguments: the data splits, the model and tokenizer, the PEFT wrapper
or the freeze policy (picked by a budget when one is given), and the trainer.

Every input error surfaces in ``prepare``, before training: the seed is set before anything random
is built (the classification head, LoRA's A matrices, prompt embeddings), since ``Trainer`` seeds
only in its ``__init__``, after the model exists; a policy is checked against the model before
any output is made.
"""

from __future__ import annotations

from recipes.launcher.arguments import choice
from recipes.launcher.peft_methods import build_peft_model


def load_data(model_args, data_args):
    """(splits, label names) for classification; (splits, None) for causal_lm and seq2seq."""
    from recipes.data import sources as data

    common = dict(
        text_column=data_args.text_column,
        dataset_config=data_args.dataset_config,
        seed=data_args.data_seed_splits,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
    )
    if model_args.task == "classification":
        return data.load_classification_splits(
            data_args.dataset, label_column=data_args.label_column, **common
        )
    if model_args.task == "seq2seq":
        from recipes.launcher.seq2seq import load_seq2seq_splits

        del common["text_column"]
        return load_seq2seq_splits(data_args.dataset, source_column=data_args.source_column,
                                   target_column=data_args.target_column, **common), None
    return data.load_causal_lm_splits(data_args.dataset, **common), None


def prepare(model_args, data_args, method_args, training_args):
    """Data, model, method and trainer; every input error surfaces here, before training."""
    from transformers import DataCollatorWithPadding, default_data_collator, set_seed

    from freeze_policies import get_policy
    from recipes.data import sources as data
    from recipes.launcher import models
    from recipes.launcher.metrics import make_compute_metrics
    from recipes.launcher.outputs import RunTrainer

    choice("task", model_args.task, models.TASKS)
    # Seed before anything random is built (the classification head, LoRA's A matrices, prompt
    # embeddings): Trainer seeds only in its __init__, after the model exists.
    set_seed(training_args.seed, deterministic=training_args.full_determinism)
    policy = (
        get_policy(method_args.policy, **method_args.policy_options)
        if method_args.method == "freeze" and method_args.policy
        else None
    )
    splits, label_names = load_data(model_args, data_args)
    model, tokenizer = models.load_model_and_tokenizer(
        model_args.model_name_or_path,
        model_args.task,
        label_names=label_names,
        cache_dir=model_args.model_cache_dir,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    if model_args.task == "classification":
        tokenized = data.tokenize_classification(splits, tokenizer, model_args.max_length)
        collator = DataCollatorWithPadding(tokenizer)
        if data_args.max_validation_samples is not None:
            validation = tokenized["validation"]
            if data_args.max_validation_samples < len(validation):
                tokenized["validation"] = validation.shuffle(
                    seed=data_args.data_seed_splits
                ).select(range(data_args.max_validation_samples))
    elif model_args.task == "seq2seq":
        from transformers import DataCollatorForSeq2Seq

        from recipes.launcher.seq2seq import tokenize_seq2seq

        tokenized = tokenize_seq2seq(splits, tokenizer, model_args.max_length,
                                     model_args.max_target_length)
        # pads labels with -100; decoder_input_ids from the labels through the model
        collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    else:
        tokenized = data.tokenize_causal_lm(splits, tokenizer, model_args.max_length)
        collator = default_data_collator
    if method_args.method == "peft":
        model = build_peft_model(model, model_args.task, method_args.peft_method,
                                 method_args.peft_options)
    budget = None
    if method_args.budget_step_ratio is not None or method_args.budget_memory_gb is not None:
        budget = choose_by_budget(model, tokenized["train"], collator, model_args, method_args,
                                  training_args)
        policy = budget.policy  # None: full fine-tuning fits the budget
        # report what runs: bottom_n with the chosen n, or full fine-tuning
        method_args.method = "freeze" if policy is not None else "full"
        method_args.policy = policy.name if policy is not None else None
        method_args.policy_options = policy.options() if policy is not None else {}
    if policy is not None:  # check the policy against this model before any output is made
        policy.trainable_names(policy.anatomy(model))
    if model_args.task == "seq2seq":  # RunTrainer with Seq2SeqTrainer's evaluation
        from recipes.launcher.seq2seq import RunSeq2SeqTrainer as RunTrainer
    trainer = RunTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=make_compute_metrics(model_args.task),
        freeze_policy=policy,
        freeze_options=method_args.freeze_options,
    )
    if model_args.task == "classification":
        # Sequence classifiers average their loss per batch; they take **kwargs, so Trainer would
        # assume they consume num_items_in_batch and scale the loss by the world size under DDP.
        trainer.model_accepts_loss_kwargs = False
    trainer.budget_choice = budget
    return trainer, tokenized


def choose_by_budget(model, train, collator, model_args, method_args, training_args):
    """bottom_n picked by ``freeze_policies.costs.budget`` from the budget flags (rank 0 prints)."""
    from freeze_policies.costs.budget import choose_frozen_depth

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
    )
    if training_args.process_index == 0:
        print(f"\n{choice}\n", flush=True)
    return choice
