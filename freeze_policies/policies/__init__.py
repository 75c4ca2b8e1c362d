"""What trains at each stage: the named policies and the one place that applies them.

A policy is a pure function of (anatomy, stage) -> trainable parameter names (``base``);
``registry`` names them (``get_policy``), ``named`` holds the classic ones (``bottom_n``,
``gradual_unfreeze``, ``lisa``...), ``parts`` the ones chosen by parameter kind (``bitfit``,
``norm_only``), ``adaptive`` the ones that decide from gradients while training
(``auto_freeze``), and ``trainable`` is the one function that sets ``requires_grad``.
"""
