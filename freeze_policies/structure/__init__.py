"""The anatomy of a model: where its embeddings, blocks, stacks of blocks and head are.

``discover.anatomy(model)`` is the entry point. It traces one forward pass on a dummy input
(``trace``) to order the modules, finds the block lists (``block_lists``) and, for models with
several stacks (encoder and decoder, vision tower and language model), each stack (``stacks``);
``layout`` holds the ``Anatomy`` and ``Stack`` records it returns. Nothing here sets
``requires_grad`` or knows about policies.
"""
