"""Prompt format: does the endpoint render the conversation the way the model's template does?

The same questions, no effort named (so that a host that drops the effort renders what an honest one does),
greedy, through the chat route; the reference in-process renders each with the model's own template and with
each wrong one a host applies by mistake (``quantlab.chat``: chatml, final-only, plain). The endpoint's turns are
compared with each rendering's: a faithful host disagrees with the model template's turns only where engine
noise flips a near-tie. The check fails when the disagreements exceed that allowance (exact binomial test), and
names the rendering whose turns the endpoint's match best. It also fails, without the allowance, when one of the
wrong renderings matches the endpoint's turns better than the model's own (which still holds when the weights are
a K-quant GGUF whose engine rounds activations too, so that no local model reproduces its greedy turns exactly).
"""

from __future__ import annotations

from quantlab import statistics
from quantlab.chat import MODEL, NAMED
from quantlab.stages.audit.checks.base import (
    CHAT,
    FAIL,
    PASS,
    TURN_TOKENS,
    Check,
    Context,
    same_turn,
    turn_text,
)

NULL_DISAGREEMENT_RATE = 0.05  # a faithful engine's greedy turns that differ from the reference's (near-ties)


class Template(Check, name="template"):
    runs_at = 30  # the rendering the endpoint's turns match, which the effort check renders with
    question = "Does the endpoint render the conversation with the model's chat template?"
    default_budget = 16
    minimum_budget = 4
    apis = (CHAT,)
    not_applicable = "a completions endpoint takes the prompt as the client rendered it"
    compares_greedy_turns = True

    def run(self, context: Context, budget: int):
        probes = context.probes(budget, offset=3)
        turns = context.client.map(lambda probe: context.ask(probe, None, temperature=0), probes)
        endpoint = [turn_text(t) for t in turns]
        context.saw(probes, [None] * len(probes), turns, TURN_TOKENS)
        agrees = {}
        for name in NAMED:
            local = [turn_text(t) for t in context.reference_turns(probes, None, template=name)]
            agrees[name] = [same_turn(a, b) for a, b in zip(endpoint, local)]
        agreement = {name: sum(values) for name, values in agrees.items()}
        n = len(probes)
        disagree = n - agreement[MODEL]
        best = max(NAMED, key=lambda name: (agreement[name], name == MODEL))
        # (a) a known wrong rendering matches better than the model's, item by item (exact McNemar, one-sided)
        wrong = max((name for name in NAMED if name != MODEL), key=lambda name: agreement[name])
        only_wrong = sum(w and not m for w, m in zip(agrees[wrong], agrees[MODEL]))
        only_model = sum(m and not w for w, m in zip(agrees[wrong], agrees[MODEL]))
        p_values = {
            "a wrong rendering matches better": statistics.excess_rate_test(only_wrong, only_wrong + only_model, 0.5)
        }
        # (b) more turns differ from the model rendering's than a faithful host's allowance: only where the
        # weights check's model explains the endpoint to a faithful server's noise (else the allowance is unknown)
        if context.weights_explained:
            p_values["more disagreements than a faithful host"] = statistics.excess_rate_test(
                disagree, n, NULL_DISAGREEMENT_RATE
            )
        p = min(1.0, min(p_values.values()) * len(p_values))
        failed = p < context.alpha
        if failed and best != MODEL:
            context.template_like = best
        reason = f"{agreement[MODEL]} of {n} turns match the model template's; " + ", ".join(
            f"{name}: {agreement[name]}" for name in NAMED if name != MODEL
        )
        if failed:
            reason += (
                f"; the endpoint renders like {best}"
                if best != MODEL
                else "; no known rendering matches (another template?)"
            )
        rate = statistics.detectable_rate(n, NULL_DISAGREEMENT_RATE, context.alpha)
        return self.result(
            FAIL if failed else PASS,
            test="exact McNemar (best wrong rendering vs the model's) and exact binomial (disagreements vs a faithful "
            f"host's {NULL_DISAGREEMENT_RATE:.0%}), Bonferroni",
            statistic=disagree / n,
            statistic_name="share of turns that differ from the model template's",
            interval=list(statistics.wilson_interval(disagree, n)),
            p_value=p,
            alpha=context.alpha,
            reason=reason,
            detectable=""
            if rate is None
            else f"a wrong rendering that changes {rate:.0%} of turns (80% power, {n} questions)",
            detail={
                "agreement": agreement,
                "questions": n,
                "p_values": p_values,
                "renders_like": best if failed else MODEL,
            },
        )
