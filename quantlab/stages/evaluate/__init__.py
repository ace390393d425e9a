"""``quantlab eval``: lm-eval tasks on the baseline and variants, with repeats, intervals and flips."""
