"""Sampling settings honored: temperature 0 reproduces itself, temperature 1 spreads as the reference's does,
and a small top_p collapses onto the greedy turn. A host that drops the sampling settings answers with its
engine's defaults (llama.cpp: temperature 0.8, top_p 0.95; vLLM: 1.0 and 1.0) whatever the request says.

Three tests, Bonferroni over them:
* temperature 0: each question asked three times; a question with more than one distinct turn counts, tested
  against a faithful engine's allowance (exact binomial);
* top_p 0.01 at temperature 1: the turn must be the endpoint's own greedy one (the top token alone passes any
  top_p below its probability); turns that differ count, tested the same way;
* temperature 1: samples from the endpoint and from the reference in-process, per question, compared by the
  Model Equality Testing MMD test (Hamming kernel, permutation p-value).

No effort is named, so that a host that drops the effort is not also blamed here (it renders what an honest
host does for a request without one).
"""

from __future__ import annotations

from quantlab import statistics
from quantlab.chat import MODEL, NAMED
from quantlab.stages.audit.checks.base import FAIL, PASS, TURN_TOKENS, Check, Context, same_turn, turn_text

NULL_VARIATION_RATE = 0.05  # a faithful engine's greedy turns that vary between identical requests (batching)
GREEDY_REPEATS = 3
SAMPLES = 6  # temperature-1 samples per question, each side


class Sampling(Check, name="sampling"):
    runs_at = 20  # whether greedy turns reproduce, which the template and effort checks need
    question = "Are temperature and top_p applied as requested?"
    default_budget = 40
    minimum_budget = 14  # 2 questions x 3 greedy asks, 2 top_p asks, 1 question x 6 samples

    def run(self, context: Context, budget: int):
        # the budget split: greedy repeats, top_p, temperature-1 samples, about 3 : 1 : 6
        spread_questions = max(1, (budget * 6 // 10) // SAMPLES)
        greedy_questions = max(2, (budget - spread_questions * SAMPLES) // (GREEDY_REPEATS + 1))
        probes = context.probes(greedy_questions + spread_questions, offset=4)
        greedy_probes, spread_probes = probes[:greedy_questions], probes[greedy_questions:]
        ask = context.ask
        greedy_jobs = [(p, r) for p in greedy_probes for r in range(GREEDY_REPEATS)]
        greedy_turns = context.client.map(
            lambda job: ask(job[0], None, temperature=0, seed=context.seed + job[1]), greedy_jobs
        )
        greedy = [turn_text(turn) for turn in greedy_turns]
        by_question = [greedy[i * GREEDY_REPEATS : (i + 1) * GREEDY_REPEATS] for i in range(greedy_questions)]
        varied = sum(len(set(turns)) > 1 for turns in by_question)
        context.saw(greedy_probes, [None] * greedy_questions, greedy_turns[::GREEDY_REPEATS], TURN_TOKENS)
        context.greedy_varied = [len(set(turns)) > 1 for turns in by_question]
        p_greedy = statistics.excess_rate_test(varied, greedy_questions, NULL_VARIATION_RATE)

        narrow = context.client.map(
            lambda p: turn_text(ask(p, None, temperature=1.0, top_p=0.01, seed=context.seed)), greedy_probes
        )
        off_greedy = sum(not same_turn(turn, turns[0]) for turn, turns in zip(narrow, by_question))
        p_top_p = statistics.excess_rate_test(off_greedy, greedy_questions, NULL_VARIATION_RATE)

        spread_jobs = [(p, s) for p in spread_probes for s in range(SAMPLES)]
        sampled = context.client.map(
            lambda job: turn_text(ask(job[0], None, temperature=1.0, seed=context.seed * 100 + job[1])), spread_jobs
        )
        endpoint = [sampled[i * SAMPLES : (i + 1) * SAMPLES] for i in range(len(spread_probes))]
        # against each rendering a host may use (the template check comes later and needs greedy turns): the
        # null is composite, "the requested temperature under some rendering", so its p-value is the largest
        by_rendering = {}
        for name in NAMED:
            local = context.reference_turns(
                spread_probes * SAMPLES, None, template=name, temperature=1.0, seed=context.seed
            )
            questions = len(spread_probes)
            samples = [[turn_text(t) for t in local[i::questions]] for i in range(questions)]
            by_rendering[name] = (statistics.mmd_permutation_test(endpoint, samples, seed=context.seed), samples)
        rendering = max(NAMED, key=lambda name: (by_rendering[name][0][1], name == MODEL))
        (mmd, p_spread), reference = by_rendering[rendering]

        p_values = {"temperature 0": p_greedy, "top_p": p_top_p, "temperature 1": p_spread}
        p = min(1.0, min(p_values.values()) * len(p_values))
        context.greedy_reproducible = p_greedy * len(p_values) >= context.alpha
        failed = p < context.alpha
        distinct = sum(len(set(s)) for s in endpoint) / len(endpoint)
        distinct_reference = sum(len(set(s)) for s in reference) / len(reference)
        reason = (
            f"temperature 0: {varied} of {greedy_questions} questions vary over {GREEDY_REPEATS} asks; "
            f"top_p 0.01: {off_greedy} of {greedy_questions} leave the greedy turn; temperature 1: "
            f"{distinct:.1f} distinct turns in {SAMPLES} (reference {distinct_reference:.1f}), MMD p = {p_spread:.3f}"
        )
        return self.result(
            FAIL if failed else PASS,
            test="exact binomial (temperature 0, top_p) and MMD permutation (temperature 1), Bonferroni x3",
            statistic=varied / greedy_questions,
            statistic_name="share of questions whose greedy turn varies",
            p_value=p,
            alpha=context.alpha,
            reason=reason,
            detail={
                "p_values": p_values,
                "mmd2": mmd,
                "temperature_1_rendering": rendering,
                "greedy_questions": greedy_questions,
                "spread_questions": len(spread_probes),
                "samples": SAMPLES,
            },
        )
