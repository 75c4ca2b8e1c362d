"""The one exception type the library raises for bad input."""


class FreezePolicyError(ValueError):
    """A policy, an option or a model that cannot be frozen as asked.

    Raised before anything on the model is changed; the message is one line naming the bad value
    and the valid choices.
    """
