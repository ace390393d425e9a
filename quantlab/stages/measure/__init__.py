"""``quantlab measure``: where in an MoE a variant differs from its baseline (see ``measure.run``)."""
