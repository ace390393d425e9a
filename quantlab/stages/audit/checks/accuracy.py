"""Accuracy conformance, the provider study's way: the task's questions answered at high effort, the endpoint's
accuracy with its interval beside the reference's on the same questions, McNemar's exact test on the items.

One run (``repeats`` 1, the default) is greedy on both sides, so the pairs are the items. ``--repeats N`` runs
each question N times at temperature 1 (the provider study ran 32 at the model's default sampling) on both sides:
the intervals then resample items and runs, McNemar takes each item's majority, and pass@k is reported for k up
to N (the unbiased estimator of Chen et al.).
"""

from __future__ import annotations

import numpy as np

from quantlab import statistics
from quantlab.chat import MODEL
from quantlab.stages.audit.checks.base import FAIL, PASS, TURN_TOKENS, Check, Context


class Accuracy(Check, name="accuracy"):
    runs_at = 50
    question = "Does the endpoint answer the task as accurately as the reference, item by item?"
    default_budget = 48
    minimum_budget = 8

    def run(self, context: Context, budget: int):
        repeats = context.repeats
        probes = context.probes(max(1, budget // repeats), offset=5)
        temperature = 0.0 if repeats == 1 else 1.0
        jobs = [(p, r) for p in probes for r in range(repeats)]
        turns = context.client.map(
            lambda job: context.ask(job[0], "high", temperature=temperature, seed=context.seed * 1000 + job[1]), jobs
        )
        if repeats == 1:
            context.saw(probes, ["high"] * len(probes), turns, TURN_TOKENS)
        endpoint = np.array([t.final.strip() == p.answer for (p, _), t in zip(jobs, turns)], dtype=float)
        endpoint = endpoint.reshape(len(probes), repeats)
        # the reference itself (not the model the weights look like), rendered with the model's own template
        local = context.reference_turns(
            [probe for probe in probes for _ in range(repeats)],
            "high",
            template=MODEL,
            as_served=False,
            temperature=temperature,
            seed=context.seed,
        )
        reference = np.array([t.final.strip() == p.answer for (p, _), t in zip(jobs, local)], dtype=float).reshape(
            len(probes), repeats
        )
        flips = statistics.flips(reference, endpoint)
        n = len(probes)
        interval = (
            statistics.wilson_interval(int(endpoint.sum()), n)
            if repeats == 1
            else statistics.bootstrap_interval(endpoint, seed=context.seed)
        )
        reference_interval = (
            statistics.wilson_interval(int(reference.sum()), n)
            if repeats == 1
            else statistics.bootstrap_interval(reference, seed=context.seed)
        )
        pass_at = {
            side: {str(k): statistics.pass_at_k(values, k) for k in sorted({1, repeats // 2 or 1, repeats})}
            for side, values in (("endpoint", endpoint), ("reference", reference))
        }
        failed = flips["mcnemar_p"] < context.alpha
        runs = "greedy" if repeats == 1 else f"{repeats} runs at temperature 1"
        return self.result(
            FAIL if failed else PASS,
            test=f"McNemar exact on the items (high effort, {runs}; majority per item)",
            statistic=float(endpoint.mean() - reference.mean()),
            statistic_name="accuracy difference (endpoint - reference)",
            interval=list(interval),
            p_value=flips["mcnemar_p"],
            alpha=context.alpha,
            reason=(
                f"endpoint {endpoint.mean():.1%} [{interval[0]:.1%}, {interval[1]:.1%}], reference "
                f"{reference.mean():.1%} [{reference_interval[0]:.1%}, {reference_interval[1]:.1%}] on the same "
                f"{n} items ({runs}); {flips['right_to_wrong']} right->wrong, {flips['wrong_to_right']} wrong->right"
            ),
            detectable=f"{n} items: a loss that breaks 6 items and repairs none is detected (McNemar p = 0.031)",
            detail={
                "items": n,
                "repeats": repeats,
                "endpoint": {"accuracy": float(endpoint.mean()), "ci95": list(interval)},
                "reference": {"accuracy": float(reference.mean()), "ci95": list(reference_interval)},
                "pass_at_k": pass_at,
                "flips": flips,
            },
        )
