"""Freezing across processes: which sharding setups a policy is safe under, and DDP's fixes.

``guards`` refuses, in one line, the combinations of policy and distributed setup that are not
proven (a schedule under FSDP1 with flat parameters or ZeRO); ``ddp`` keeps ranks identical when
the trainable set changes after the model was wrapped; ``fsdp2`` keeps the optimizer state of
closed blocks through an FSDP2 (``fully_shard``) checkpoint.
"""
