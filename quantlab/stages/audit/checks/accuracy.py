"""Accuracy conformance, the provider study's way: the task's questions answered at high effort, the endpoint's
accuracy with its interval beside the reference's on the same questions, McNemar's exact test on the items
(greedy: one run each side, so the pairs are the items), pass@k over repeats where the budget allows them."""

from __future__ import annotations

import numpy as np

from quantlab import statistics
from quantlab.stages.audit.checks.base import FAIL, PASS, TURN_TOKENS, Check, Context


class Accuracy(Check, name="accuracy"):
    question = "Does the endpoint answer the task as accurately as the reference, item by item?"
    default_budget = 48
    minimum_budget = 8

    def run(self, context: Context, budget: int):
        probes = context.probes(budget, offset=5)
        turns = context.client.map(lambda probe: context.ask(probe, "high", temperature=0), probes)
        endpoint = np.array([t.final.strip() == p.answer for p, t in zip(probes, turns)])
        prompts = [context.reference.prompt(p.messages, "high") for p in probes]
        reference = np.array(
            [t.final.strip() == p.answer for p, t in zip(probes, context.reference.turns(prompts, TURN_TOKENS))]
        )
        flips = statistics.flips(reference[:, None].astype(float), endpoint[:, None].astype(float))
        n = len(probes)
        interval = statistics.wilson_interval(int(endpoint.sum()), n)
        failed = flips["mcnemar_p"] < context.alpha
        return self.result(
            FAIL if failed else PASS,
            test="McNemar exact on the items (greedy, high effort)",
            statistic=float(endpoint.mean() - reference.mean()),
            statistic_name="accuracy difference (endpoint - reference)",
            interval=list(interval),
            p_value=flips["mcnemar_p"],
            alpha=context.alpha,
            reason=(
                f"endpoint {endpoint.mean():.1%} [{interval[0]:.1%}, {interval[1]:.1%}], reference "
                f"{reference.mean():.1%} on the same {n} items; {flips['right_to_wrong']} right->wrong, "
                f"{flips['wrong_to_right']} wrong->right"
            ),
            detectable=f"{n} items: a loss that breaks 6 items and repairs none is detected (McNemar p = 0.031)",
            detail={
                "items": n,
                "endpoint": {"accuracy": float(endpoint.mean()), "ci95": list(interval)},
                "reference": {
                    "accuracy": float(reference.mean()),
                    "ci95": list(statistics.wilson_interval(int(reference.sum()), n)),
                },
                "flips": flips,
            },
        )
