"""Weights: is the endpoint's next-token distribution the reference's, and which local candidate explains it?

With log-probabilities (the completions route, ``logprobs``): the endpoint continues prompts rendered here,
greedily, and returns the top-k log-probabilities at every generated position. Each local model is run on the
same tokens, and per prompt the mean KL(model ‖ endpoint) over those positions is taken (its top-k lower bound,
``quantlab.stages.measure.engine``). A faithful engine is not bit-exact (bf16 activations, its own kernels), so
the test is calibrated: a prompt "exceeds" when its KL is above the 99th percentile of a faithful server's
(``calibration``), and the endpoint fails when more prompts exceed than a faithful server's own would (an exact
permutation test, ``statistics.exceedance_p_value``). The candidate with the smallest mean KL is the one named.

Without log-probabilities: sampled completions (temperature 1) from the endpoint and from each local model,
compared by the Model Equality Testing MMD test (Hamming kernel, permutation p-value: exact in level, so it
needs no calibration); the candidate with the smallest MMD is named.

Differential (``--reference-url``): the trusted endpoint continues the same prompts, and per prompt the mean
KL(trusted ‖ endpoint) is taken over the positions whose context both share (the common prefix of their greedy
tokens and the first position after it), both sides known on their top-k only (``topk_pair_kl``). The null is
the trusted endpoint's own noise: each prompt asked of it again, alone rather than in a batch (a batch-dependent
reduction is what a second faithful host of its engine adds), and the sources declared faithful against it
(``--calibrate``: another engine's arithmetic), the noisiest of them used, as for a local reference. Without
log-probabilities, the MMD test compares the endpoint's samples with the trusted endpoint's.
"""

from __future__ import annotations

import numpy as np

from quantlab import statistics
from quantlab.chat import MODEL
from quantlab.stages.audit.calibration import Calibration, kl_per_prompt, pair_kl_per_prompt
from quantlab.stages.audit.checks.base import COULD_NOT_CHECK, EFFORTS, FAIL, PASS, Check, Context
from quantlab.stages.audit.client import CouldNotCheck
from quantlab.stages.audit.local import LocalModel

GENERATED_TOKENS = 24
TOP_K = 20  # vLLM's default maximum; the endpoint may allow fewer (then 5, OpenAI's)
SAMPLES_PER_PROMPT = 8  # the text-only test's samples from each side


class Weights(Check, name="weights"):
    runs_at = 10  # first: the model the endpoint's distributions look like, which the others compare against
    question = "Is the endpoint's next-token distribution the reference's, and which candidate explains it?"
    default_budget = 24
    minimum_budget = 2

    def run(self, context: Context, budget: int):
        probes = context.probes(budget, offset=1)
        prompts = [context.reference.prompt(p.messages, EFFORTS[i % 3]) for i, p in enumerate(probes)]
        try:
            answers = _logprobs(context.client, prompts)
        except CouldNotCheck as error:
            if "HTTP 4" not in str(error) and "log-probabilities" not in str(error):
                raise
            return self._text_only(context, probes, budget, str(error))
        if context.trusted is not None:
            return self._differential(context, prompts, answers)
        return self._with_logprobs(context, prompts, answers, budget)

    # --- with log-probabilities -----------------------------------------------------------------------
    def _with_logprobs(self, context: Context, prompts, answers, budget: int):
        models = [context.reference] + [c for c in context.candidates if c.name != context.reference.name]
        kl = {model.name: kl_per_prompt(model, prompts, answers) for model in models}
        kept = [i for i, value in enumerate(kl[context.reference.name]) if not np.isnan(value)]
        if len(kept) < 2:
            raise CouldNotCheck("the endpoint's tokens do not map to the reference's vocabulary (another tokenizer?)")
        calibration = context.calibration
        threshold = calibration.threshold
        rows = {}
        for name, per_prompt in kl.items():
            values = np.asarray(per_prompt)[kept]
            exceed = int((values > threshold).sum())
            rows[name] = {
                "mean_kl": float(values.mean()),
                "ci95": statistics.paired_bootstrap({"kl": values}, seed=context.seed)["kl"]["ci95"],
                "prompts_over_threshold": exceed,
                "p_value": statistics.exceedance_p_value(exceed, len(values), calibration.size, calibration.rank),
            }
        context.weights_kl = {name: [float(v) for v in np.asarray(per_prompt)[kept]] for name, per_prompt in kl.items()}
        named = min(rows, key=lambda name: rows[name]["mean_kl"])
        reference = rows[context.reference.name]
        failed = reference["p_value"] < context.alpha
        explained = rows[named]["p_value"] >= context.alpha
        if failed:
            context.served_like = next(m for m in models if m.name == named)
            context.weights_explained = explained
        reason = (
            f"{reference['prompts_over_threshold']} of {len(kept)} prompts have a KL above a faithful server's 99th "
            f"percentile ({threshold:.2e}, the {_ordinal(calibration.rank)} largest of {calibration.size})"
        )
        if failed and explained:
            reason += f"; explained by {named} (mean KL {rows[named]['mean_kl']:.2e})"
        elif failed:
            reason += (
                f"; none of the {len(rows)} local models (the reference and its candidates) explains the endpoint "
                f"(the closest, {named}, at mean KL "
                f"{rows[named]['mean_kl']:.2e}, is itself rejected)"
            )
        return self.result(
            FAIL if failed else PASS,
            test="exceedances of a faithful server's 99th percentile (exact permutation), top-k KL(candidate ‖ endpoint) per prompt",
            statistic=reference["mean_kl"],
            statistic_name="mean KL(reference ‖ endpoint) per token",
            interval=reference["ci95"],
            p_value=reference["p_value"],
            alpha=context.alpha,
            reason=reason,
            detectable=_detectable(len(kept), calibration, context.alpha),
            detail={
                "named": named if explained else None,  # None: no candidate explains the endpoint
                "closest": named,
                "explains": explained,
                "candidates": rows,
                "threshold": threshold,
                "threshold_rank": calibration.rank,
                "calibration_size": calibration.size,
                "calibration": calibration.source,
                "prompts": len(kept),
                "kl_per_prompt": [float(v) for v in np.asarray(kl[context.reference.name])[kept]],
                "top_k": len(answers[0].top_logprobs[0]),
                "mode": "log-probabilities",
            },
        )

    # --- differential: against the trusted endpoint's log-probabilities ---------------------------------
    def _differential(self, context: Context, prompts: list[str], answers):
        trusted = context.trusted
        assert trusted is not None
        top_k = len(answers[0].top_logprobs[0])
        theirs = trusted.map(lambda prompt: _logprobs(trusted.client, [prompt], top_k)[0], prompts)
        # again, one at a time: the batch compositions differ from the first asking's
        again = [_logprobs(trusted.client, [prompt], top_k)[0] for prompt in prompts]
        renderer = context.reference  # its tokenizer maps the token texts to ids; its weights are never loaded
        kl = [pair_kl_per_prompt(renderer, a, b) for a, b in zip(theirs, answers)]
        kept = [i for i, value in enumerate(kl) if not np.isnan(value)]
        if len(kept) < 2:
            raise CouldNotCheck("the endpoints' tokens do not map to the reference's vocabulary (another tokenizer?)")
        reruns = [v for v in (pair_kl_per_prompt(renderer, a, b) for a, b in zip(theirs, again)) if not np.isnan(v)]
        declared = context.calibration.sources if context.calibration is not None else {}
        calibration = Calibration.of(declared | {f"reruns of {trusted.name}": reruns})
        values = np.asarray(kl)[kept]
        # the causes ranking weighs the same KLs against the same null (the trusted endpoint's weights: the reference's)
        context.calibration = calibration
        context.weights_kl = {context.reference.name: [float(v) for v in values]}
        exceed = int((values > calibration.threshold).sum())
        p_value = statistics.exceedance_p_value(exceed, len(values), calibration.size, calibration.rank)
        failed = p_value < context.alpha
        if failed:
            context.weights_explained = False  # no local model explains the endpoint: the allowances do not hold
        reason = (
            f"{exceed} of {len(kept)} prompts have a KL from the trusted endpoint above its faithful noise "
            f"({calibration.threshold:.2e}, the {_ordinal(calibration.rank)} largest of {calibration.size}: "
            f"{calibration.source})"
        )
        if calibration.threshold == 0.0:
            reason += (
                "; the trusted endpoint reproduces itself exactly, so any departure counts: a faithful host on "
                "another engine needs a calibration (quantlab audit ITS_URL --reference-url TRUSTED --calibrate)"
            )
        return self.result(
            FAIL if failed else PASS,
            test="exceedances of the trusted endpoint's faithful noise (exact permutation), top-k KL(trusted ‖ "
            "endpoint) per prompt on their shared context",
            statistic=float(values.mean()),
            statistic_name="mean KL(trusted ‖ endpoint) per token",
            interval=statistics.paired_bootstrap({"kl": values}, seed=context.seed)["kl"]["ci95"],
            p_value=p_value,
            alpha=context.alpha,
            reason=reason,
            detectable=_detectable(len(kept), calibration, context.alpha),
            detail={
                "named": None if failed else trusted.name,
                "explains": not failed,
                "threshold": calibration.threshold,
                "threshold_rank": calibration.rank,
                "calibration_size": calibration.size,
                "calibration": calibration.source,
                "prompts": len(kept),
                "kl_per_prompt": [float(v) for v in values],
                "rerun_kl_max": max(reruns, default=float("nan")),
                "top_k": top_k,
                "mode": "differential log-probabilities",
            },
        )

    # --- text only ----------------------------------------------------------------------------------
    def _text_only(self, context: Context, probes, budget: int, why: str):
        left = context.client.budget or 0
        prompts_count = max(1, left // SAMPLES_PER_PROMPT)
        if left < SAMPLES_PER_PROMPT:
            return self.result(COULD_NOT_CHECK, reason=f"no log-probabilities ({why}) and too few queries left")
        chosen = probes[:prompts_count]
        prompts = [context.reference.prompt(p.messages, "high") for p in chosen]
        requests = [(i, s) for i in range(len(chosen)) for s in range(SAMPLES_PER_PROMPT)]
        texts = context.client.map(
            lambda job: context.ask(chosen[job[0]], "high", temperature=1.0, seed=context.seed * 10_000 + job[1]),
            requests,
        )
        endpoint: list[list[str]] = [[] for _ in chosen]
        for (i, _), turn in zip(requests, texts):
            endpoint[i].append(turn.reasoning + turn.final)
        models = [context.reference] + [c for c in context.candidates if c.name != context.reference.name]
        # each side's samples: the trusted endpoint's (a differential audit), else each local model's
        sides: dict[str, LocalModel | None] = (
            {context.trusted.name: None} if context.trusted is not None else {model.name: model for model in models}
        )
        rows = {}
        for name, model in sides.items():
            local = (
                model.turns(prompts * SAMPLES_PER_PROMPT, 96, temperature=1.0, seed=context.seed)
                if model is not None
                else context.reference_turns(
                    chosen * SAMPLES_PER_PROMPT, "high", MODEL, 96, as_served=False, temperature=1.0, seed=context.seed
                )
            )
            samples = [[t.reasoning + t.final for t in local[i :: len(chosen)]] for i in range(len(chosen))]
            mmd, p = statistics.mmd_permutation_test(endpoint, samples, seed=context.seed)
            rows[name] = {"mmd2": mmd, "p_value": p}
        named = min(rows, key=lambda name: rows[name]["mmd2"])
        reference = rows[next(iter(sides))]
        failed = reference["p_value"] < context.alpha
        if failed:
            context.served_like = next((m for m in models if m.name == named), None)
            context.weights_explained = rows[named]["p_value"] >= context.alpha
        return self.result(
            FAIL if failed else PASS,
            test="Model Equality Testing MMD (Hamming kernel, permutation p-value), sampled completions",
            statistic=reference["mmd2"],
            statistic_name="MMD² against the reference",
            p_value=reference["p_value"],
            alpha=context.alpha,
            reason=f"no log-probabilities ({why}); {len(chosen)} prompts x {SAMPLES_PER_PROMPT} samples each side",
            detail={
                "named": named if rows[named]["p_value"] >= context.alpha else None,
                "closest": named,
                "explains": rows[named]["p_value"] >= context.alpha,
                "candidates": rows,
                "mode": "text only",
            },
        )


def _logprobs(client, prompts: list[str], top_k: int = TOP_K):
    """Each prompt's greedy continuation with the top-k log-probabilities of every generated token (5, OpenAI's
    limit, where the endpoint refuses ``top_k``)."""

    def ask(prompt: str, top_k: int):
        return client.complete(
            prompt, max_tokens=GENERATED_TOKENS, temperature=0, logprobs=top_k, skip_special_tokens=False
        )

    try:
        first = ask(prompts[0], top_k)
    except CouldNotCheck as error:
        if "HTTP 400" not in str(error):
            raise
        first, top_k = ask(prompts[0], 5), 5
    if not (first.tokens and first.top_logprobs):
        raise CouldNotCheck("completions: no log-probabilities in the answer (logprobs)")
    answers = [first] + client.map(lambda prompt: ask(prompt, top_k), prompts[1:])
    if not all(answer.tokens and answer.top_logprobs for answer in answers):
        raise CouldNotCheck("completions: no log-probabilities in the answers (logprobs)")
    return answers


def _detectable(prompts: int, calibration, alpha: float) -> str:
    needed = next(
        (
            k
            for k in range(1, prompts + 1)
            if statistics.exceedance_p_value(k, prompts, calibration.size, calibration.rank) < alpha
        ),
        None,
    )
    if needed is None:
        return f"{prompts} prompts detect nothing at level {alpha}"
    return f"a distortion that puts {needed} of {prompts} prompts over the threshold"


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")
