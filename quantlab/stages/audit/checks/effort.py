"""Reasoning effort honored: do low, medium and high change the endpoint's reasoning as they change the
reference's? A host that drops the effort (the provider study's stale engine) answers every request at the
template's default, medium.

The same questions at each effort, greedy, through the chat route; per effort, the endpoint's reasoning length
(characters) is paired with the reference's on the same question and tested by Wilcoxon's signed-rank test,
Bonferroni over the three efforts. The detail says which of the reference's efforts each requested one looks like.
"""

from __future__ import annotations

import numpy as np

from quantlab import statistics
from quantlab.stages.audit.checks.base import (
    CHAT,
    EFFORTS,
    FAIL,
    PASS,
    TURN_TOKENS,
    Check,
    Context,
)


class Effort(Check, name="effort"):
    runs_at = 40
    question = "Does the requested reasoning effort change the reasoning as it does the reference's?"
    default_budget = 36
    minimum_budget = 6
    apis = (CHAT,)
    not_applicable = "a completions endpoint takes the prompt the client rendered, effort included: nothing to honor"
    compares_greedy_turns = True

    def run(self, context: Context, budget: int):
        probes = context.probes(budget // len(EFFORTS), offset=2)
        jobs = [(probe, effort) for effort in EFFORTS for probe in probes]
        turns = context.client.map(lambda job: context.ask(job[0], job[1], temperature=0), jobs)
        context.saw([probe for probe, _ in jobs], [effort for _, effort in jobs], turns, TURN_TOKENS)
        endpoint = {e: [len(t.reasoning) for (_, effort), t in zip(jobs, turns) if effort == e] for e in EFFORTS}
        correct_endpoint = {
            e: [t.final.strip() == p.answer for (p, effort), t in zip(jobs, turns) if effort == e] for e in EFFORTS
        }
        reference, correct_reference = {}, {}
        for effort in EFFORTS:
            local = context.reference_turns(probes, effort)
            reference[effort] = [len(t.reasoning) for t in local]
            correct_reference[effort] = [t.final.strip() == p.answer for p, t in zip(probes, local)]
        p_values = {e: statistics.signed_rank_p(np.array(endpoint[e]) - np.array(reference[e])) for e in EFFORTS}
        looks_like = {
            e: min(EFFORTS, key=lambda r: float(np.abs(np.array(endpoint[e]) - np.array(reference[r])).mean()))
            for e in EFFORTS
        }
        p = min(1.0, min(p_values.values()) * len(EFFORTS))
        failed = p < context.alpha
        mean = {e: float(np.mean(endpoint[e])) for e in EFFORTS}
        reason = (
            "reasoning length (chars) at low/medium/high: endpoint "
            + "/".join(f"{mean[e]:.0f}" for e in EFFORTS)
            + ", reference "
            + "/".join(f"{np.mean(reference[e]):.0f}" for e in EFFORTS)
        )
        if failed:
            reason += "; requested " + ", ".join(f"{e} looks like {looks_like[e]}" for e in EFFORTS)
            if len(set(looks_like.values())) == 1:
                reason += f": every effort answered as {looks_like['low']} (the effort is dropped)"
        return self.result(
            FAIL if failed else PASS,
            test="Wilcoxon signed-rank per effort on paired reasoning lengths, Bonferroni x3",
            statistic=max(abs(mean[e] - float(np.mean(reference[e]))) for e in EFFORTS),
            statistic_name="largest mean reasoning-length gap (chars)",
            p_value=p,
            alpha=context.alpha,
            reason=reason,
            # all n paired differences of one sign: exact two-sided p = 2 / 2^n, times 3 efforts, below 0.05 from n = 7
            detectable=f"{len(probes)} questions per effort: an effort answered as another on every question is "
            "detected from 7 questions per effort (21 queries) on",
            detail={
                "questions_per_effort": len(probes),
                "p_value_per_effort": p_values,
                "looks_like": looks_like,
                "reasoning_chars": {"endpoint": endpoint, "reference": reference},
                "accuracy": {
                    side: {
                        e: {
                            "value": float(np.mean(values[e])),
                            "ci95": list(statistics.wilson_interval(int(np.sum(values[e])), len(values[e]))),
                        }
                        for e in EFFORTS
                    }
                    for side, values in (("endpoint", correct_endpoint), ("reference", correct_reference))
                },
            },
        )
