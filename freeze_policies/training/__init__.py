"""Inside the Trainer: ``FreezeTrainer``, the schedule callback and what they rely on.

``options`` (``FreezeOptions``, the one options object), ``optim`` (optimizer groups, layer-wise
rates), ``modes`` (how frozen is frozen: ``requires_grad``, ``zero_lr``, ``zero_grad``),
``audit`` (frozen weights stay bit-identical), ``resume`` (a checkpoint matches its schedule),
``checkpointing`` (gradient checkpointing with frozen inputs), ``precision`` (frozen weights in
bfloat16), ``prefix_cache`` (replaying a frozen prefix's outputs) and ``delta`` (saving only what
trained). Modules here import ``transformers``' Trainer; ``import freeze_policies`` loads them
lazily.
"""
