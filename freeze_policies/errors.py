"""The one exception type the library raises for bad input."""


class FreezePolicyError(ValueError):
    """A policy, an option or a model that cannot be frozen as asked.

    Raised before anything on the model is changed; the message is one line naming the bad value
    and the valid choices.
    """


class FrozenWeightsMovedError(RuntimeError):
    """The frozen-weights audit found parameters that changed although they were frozen.

    Raised after training (the model is left as trained); the message names the freeze mode, how
    many parameters moved and the first of them.
    """
