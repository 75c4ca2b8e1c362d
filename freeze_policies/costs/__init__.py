"""What a choice of trainable parameters costs: predicted, measured, and held to a budget.

``flops`` predicts a step's compute and memory from the anatomy (``predict_cost``), ``measure``
counts bytes of gradients, optimizer state and saved activations on a real step, ``summary``
tabulates trainable against total parameters, and ``budget`` picks a policy's depth to fit a
step-time or memory budget.
"""
