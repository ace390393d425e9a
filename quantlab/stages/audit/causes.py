"""Which known departure explains what the audit saw: a library of fingerprints, ranked by likelihood.

The checks each test one aspect against the reference; a failing check says *that* the endpoint departs, not
always *why* (a host that hard-codes high effort fails the template check too: its turns to a request without
an effort are the reference's at high). The ranking asks one question of everything the checks saw at once:
which departure, applied to the reference, makes the endpoint's answers most likely?

A **fingerprint** is a simulated host: the reference (or a variant of the store, for its weights) served with one
departure, known from the provider study: each variant's format (``weights: mxfp4``), each wrong rendering
(``template: chatml``), the effort dropped or fixed at low or high, the sampling settings dropped, and the
engines a faithful host's arithmetic may come from (each calibration source, ``engine: ...``). What the
audit saw, and how likely each fingerprint makes it:

* the weights check's per-prompt KL from the fingerprint's model to the endpoint: exponential with the mean of
  the fingerprint's faithful noise (the calibration source's per-prompt KLs), so that a model whose
  distributions sit far above that noise is very unlikely to be the one served;
* every greedy turn the checks asked for: the fingerprint's own greedy turn to the same request (rendered with
  its template and effort) is reproduced with probability ``1 - FLIP_RATE`` (a faithful engine's near-tie
  flips, the template check's allowance), and missed with probability ``FLIP_RATE``, a miss then taking the
  text seen with probability ``UNPREDICTED_TURN`` (alike for every fingerprint);
* whether each of the sampling check's greedy questions varied over its three asks: with probability
  ``FLIP_RATE`` for a host that applies temperature 0, ``1 - FLIP_RATE`` for one that samples anyway.

Two fingerprints stand for departures outside the library, with their parameters fitted to what was seen and
charged for it (Schwarz's criterion, half the log of the observations per parameter): ``weights: an unknown
format`` (its KL scale and turn miss rate fitted) and ``rendering: an unknown template or effort`` (its turn
miss rate fitted). When one of them ranks first, no known departure explains the endpoint, and the ranking says
so with the kind it found and the closest known fingerprint. A known fingerprint ranked first is also tested on
its own (``explains``): its KLs against the calibration's threshold (the weights check's exact exceedance test),
its turn misses against the flip allowance, its greedy variation, Bonferroni over the parts; when that rejects,
nothing in the library explains the endpoint either.

Besides single departures, one pair: the likeliest known format with the likeliest known rendering or effort
policy (a host with quantized weights and the effort dropped); a host with more departures than that is named by
its likeliest single one or pair, which its fit test then rejects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from quantlab import statistics
from quantlab.chat import MODEL, NAMED
from quantlab.stages.audit.checks.base import Context, SeenTurn, same_turn, turn_text
from quantlab.stages.audit.checks.template import NULL_DISAGREEMENT_RATE
from quantlab.store.records import AuditCause

FLIP_RATE = NULL_DISAGREEMENT_RATE  # a faithful host's greedy turns that differ from the reference's
NOISE_FLOOR = 1e-6  # the smallest KL scale: the top-k bound's float32 resolution (a few 1e-7)
# The chance that a turn a fingerprint does not reproduce takes the very text seen: the same for every
# fingerprint, so that each miss costs alike. Without it a fingerprint fitted to miss every turn would fit
# perfectly (a miss rate of 1 describes misses exactly) while predicting none of the texts.
UNPREDICTED_TURN = 0.01
HONORED, DROPPED = "honored", "dropped"
FIXED_EFFORTS = ("low", "high")  # fixed at medium renders as dropped does (medium is the template's default)
UNKNOWN_WEIGHTS = "weights: an unknown format"
UNKNOWN_RENDERING = "rendering: an unknown template or effort"


@dataclass(frozen=True)
class Fingerprint:
    """A simulated host: the local model whose weights it serves, the rendering and effort policy its chat route
    applies, whether it samples whatever the request says, and the KL scale of its weights' faithful noise
    (or the smallest scale it may be fitted to: a departure of unknown size)."""

    name: str
    kind: str  # weights, engine, template, effort, sampling
    weights: str
    template: str = MODEL
    effort: str = HONORED  # honored, dropped, or the one effort every request is answered at
    sampled: bool = False
    noise: float = NOISE_FLOOR
    fits_noise: bool = False  # its KL scale fitted (no smaller than ``noise``: a departure only adds to it)
    known: bool = True

    def served_effort(self, requested: str | None) -> str | None:
        if self.effort == HONORED:
            return requested
        return None if self.effort == DROPPED else self.effort

    def rendering(self, seen: SeenTurn) -> tuple[str, str | None]:
        """The template and effort this host renders ``seen``'s request with (the audit's own rendering for a
        completions request: the host has nothing to render)."""
        if seen.rendered_here:
            return MODEL, seen.effort
        return self.template, self.served_effort(seen.effort)


@dataclass
class Evidence:
    """What the ranking weighs: per model, per-prompt KLs; the endpoint's greedy turns; greedy variation."""

    weights_kl: dict[str, np.ndarray]
    seen: list[SeenTurn]
    greedy_varied: np.ndarray
    predicted: dict[str, list[str | None]] = field(default_factory=dict)  # fingerprint -> turn per seen


def noise_scale(values: list[float]) -> float:
    """The exponential scale of a faithful source's per-prompt KLs (their mean, the bound's negatives at 0)."""
    return max(float(np.clip(np.asarray(values, dtype=float), 0, None).mean()), NOISE_FLOOR) if values else NOISE_FLOOR


def library(context: Context) -> list[Fingerprint]:
    """Every fingerprint this audit can simulate: the engines of its calibration, the store's variants (not in a
    differential audit: their weights cannot be run against a trusted endpoint), the wrong renderings, the
    effort policies, the sampling dropped, and the two unknown departures."""
    reference = context.reference.name
    calibration = context.calibration
    has_kl = reference in context.weights_kl
    if has_kl and calibration is not None:
        noise = noise_scale(calibration.sources[calibration.source])
        engines = [
            Fingerprint(f"engine: {source}", "engine", reference, noise=noise_scale(values))
            for source, values in calibration.sources.items()
        ]
    else:
        noise, engines = NOISE_FLOOR, [Fingerprint("engine: faithful", "engine", reference, noise=NOISE_FLOOR)]
    prints = engines + [
        Fingerprint(f"weights: {model.name}", "weights", model.name, noise=noise)
        for model in context.candidates
        if model.name != reference
    ]
    prints += [
        Fingerprint(f"template: {name}", "template", reference, template=name, noise=noise) for name in NAMED[1:]
    ]
    prints.append(Fingerprint("effort dropped", "effort", reference, effort=DROPPED, noise=noise))
    prints += [
        Fingerprint(f"effort fixed at {effort}", "effort", reference, effort=effort, noise=noise)
        for effort in FIXED_EFFORTS
    ]
    prints.append(Fingerprint("sampling dropped", "sampling", reference, sampled=True, noise=noise))
    if has_kl:
        prints.append(Fingerprint(UNKNOWN_WEIGHTS, "weights", reference, noise=noise, fits_noise=True, known=False))
    prints.append(Fingerprint(UNKNOWN_RENDERING, "template", reference, noise=noise, known=False))
    return prints


def rank(context: Context) -> tuple[list[AuditCause], str]:
    """The fingerprints ranked by their (penalized) log-likelihood of what the audit saw, most likely first, and
    the sentence naming the cause (or saying that none of the known ones explains the endpoint)."""
    evidence = Evidence(
        {name: np.asarray(values, dtype=float) for name, values in context.weights_kl.items()},
        list(context.seen),
        np.asarray(context.greedy_varied, dtype=bool),
    )
    prints = library(context)
    _simulate(context, prints, evidence)
    scores = {fingerprint: log_likelihood(fingerprint, evidence) for fingerprint in prints}
    faithful = max(ll for fingerprint, (ll, _) in scores.items() if fingerprint.kind == "engine")
    pair = _pair(scores, faithful)
    if pair is not None:
        _simulate(context, [pair], evidence)
        scores[pair] = log_likelihood(pair, evidence)
    scored = sorted(scores.items(), key=lambda item: -item[1][0])
    causes = []
    for i, (fingerprint, (ll, parts)) in enumerate(scored):
        fit = fit_p_value(fingerprint, evidence, context) if fingerprint.known else None
        causes.append(
            AuditCause(
                rank=i + 1,
                name=fingerprint.name,
                kind=fingerprint.kind,
                known=fingerprint.known,
                log_likelihood=ll,
                log_likelihood_ratio=ll - faithful,
                evidence=parts,
                fit_p_value=fit,
                explains=None if fit is None else fit >= context.alpha,
            )
        )
    return causes, _sentence(causes, evidence)


def _pair(scores: dict[Fingerprint, tuple[float, dict]], faithful: float) -> Fingerprint | None:
    """Two departures at once (the demo's host: mxfp4 weights, the effort dropped): the likeliest known format
    with the likeliest known rendering or effort policy, where each alone is likelier than the faithful engine.
    Searched greedily, one pair: every pair of the library would mean simulating each format under each
    rendering."""

    def best(kinds: tuple[str, ...]) -> Fingerprint | None:
        chosen = [f for f in scores if f.known and not f.sampled and f.kind in kinds and scores[f][0] > faithful]
        return max(chosen, key=lambda f: scores[f][0], default=None)

    weights, serving = best(("weights",)), best(("template", "effort"))
    if weights is None or serving is None:
        return None
    return replace(
        serving, name=f"{weights.name} + {serving.name}", kind=f"weights + {serving.kind}", weights=weights.weights
    )


def _simulate(context: Context, prints: list[Fingerprint], evidence: Evidence) -> None:
    """Each fingerprint's greedy turn to every request the endpoint answered greedily: the local model's (its
    greedy turns are kept, so that what a check asked already is not asked again), or, in a differential
    audit, the trusted endpoint's."""
    requests: dict[tuple, list[int]] = {}  # (model, template, effort, max_tokens) -> indices into seen
    for fingerprint in prints:
        if fingerprint.sampled:
            continue
        for i, seen in enumerate(evidence.seen):
            requests.setdefault((fingerprint.weights, *fingerprint.rendering(seen), seen.max_tokens), []).append(i)
    turns: dict[tuple, str] = {}
    models = {model.name: model for model in [context.reference, *context.candidates]}
    for (weights, template, effort, max_tokens), indices in requests.items():
        probes = list({evidence.seen[i].probe.question: evidence.seen[i].probe for i in indices}.values())
        if context.trusted is not None:
            answers = context.trusted.turns(probes, effort, template, max_tokens)
        else:
            model = models[weights]
            answers = model.turns([model.prompt(p.messages, effort, template) for p in probes], max_tokens)
        for probe, answer in zip(probes, answers):
            turns[(weights, template, effort, max_tokens, probe.question)] = turn_text(answer)
    for fingerprint in prints:
        evidence.predicted[fingerprint.name] = [
            None
            if fingerprint.sampled
            else turns[(fingerprint.weights, *fingerprint.rendering(seen), seen.max_tokens, seen.probe.question)]
            for seen in evidence.seen
        ]


def _misses(fingerprint: Fingerprint, evidence: Evidence) -> np.ndarray:
    """The endpoint's greedy turns the fingerprint does not reproduce; a sampling host's are held against the
    reference's greedy turns (the first engine fingerprint's: a sampling host's are not simulated)."""
    name = fingerprint.name
    if fingerprint.sampled:
        name = next(name for name in evidence.predicted if name.startswith("engine: "))
    predicted = evidence.predicted[name]
    return np.array([not same_turn(s.text, p) for s, p in zip(evidence.seen, predicted) if p is not None], dtype=bool)


def log_likelihood(fingerprint: Fingerprint, evidence: Evidence) -> tuple[float, dict]:
    """(penalized log-likelihood, its parts): the KLs, the greedy turns, the greedy variation."""
    parts: dict[str, float] = {}
    kl = evidence.weights_kl.get(fingerprint.weights)
    if kl is not None:
        values = np.clip(kl, 0, None)
        scale = max(float(values.mean()), fingerprint.noise) if fingerprint.fits_noise else fingerprint.noise
        parts["weights"] = float(np.sum(-math.log(scale) - values / scale))
        if fingerprint.fits_noise:
            parts["weights"] -= 0.5 * math.log(len(values))
    if evidence.seen:
        misses = _misses(fingerprint, evidence)
        if fingerprint.sampled or not fingerprint.known:
            # a miss rate of its own: a sampling host's depends on the engine's default temperature, an unknown
            # departure's on its size; fitted, and charged for (no lower than a faithful host's)
            rate = min(max(float(misses.mean()), FLIP_RATE), 1 - 0.5 / len(misses))
            parts["turns"] = _bernoulli(misses, rate) - 0.5 * math.log(len(misses))
        else:
            parts["turns"] = _bernoulli(misses, FLIP_RATE)
        parts["turns"] += int(misses.sum()) * math.log(UNPREDICTED_TURN)
    if evidence.greedy_varied.size:
        varies = 1 - FLIP_RATE if fingerprint.sampled else FLIP_RATE
        parts["greedy variation"] = _bernoulli(evidence.greedy_varied, varies)
    return float(sum(parts.values())), parts


def _bernoulli(events: np.ndarray, rate: float) -> float:
    hits = int(events.sum())
    return hits * math.log(rate) + (len(events) - hits) * math.log(1 - rate)


def fit_p_value(fingerprint: Fingerprint, evidence: Evidence, context: Context) -> float:
    """Whether the known fingerprint explains what was seen on its own: the weights check's exceedance test on
    its KLs, its turn misses against the flip allowance, its greedy variation (Bonferroni over the parts)."""
    p_values = []
    kl = evidence.weights_kl.get(fingerprint.weights)
    calibration = context.calibration
    if kl is not None and calibration is not None:
        exceed = int((kl > calibration.threshold).sum())
        p_values.append(statistics.exceedance_p_value(exceed, len(kl), calibration.size, calibration.rank))
    if evidence.seen and not fingerprint.sampled:
        misses = _misses(fingerprint, evidence)
        p_values.append(statistics.excess_rate_test(int(misses.sum()), len(misses), FLIP_RATE))
    varied = evidence.greedy_varied
    if varied.size:
        events = int((~varied).sum()) if fingerprint.sampled else int(varied.sum())
        p_values.append(statistics.excess_rate_test(events, len(varied), FLIP_RATE))
    return min(1.0, min(p_values, default=1.0) * max(1, len(p_values)))


def _sentence(causes: list[AuditCause], evidence: Evidence) -> str:
    first = causes[0]
    seen = f"{len(evidence.seen)} greedy turns" + (
        f", {len(next(iter(evidence.weights_kl.values())))} prompts' KLs" if evidence.weights_kl else ""
    )
    if first.known and first.explains:
        return (
            f"explained by {first.name} (log-likelihood ratio {first.log_likelihood_ratio:.1f} over faithful; {seen})"
        )
    if not first.known:
        closest = next((c for c in causes if c.known and c.kind == first.kind), None) or next(
            c for c in causes if c.known
        )
        return (
            f"none of the known departures explains it: most likely {first.name} (closest known: {closest.name}; "
            f"{seen})"
        )
    return (
        f"none of the known departures explains it: the most likely, {first.name}, is itself rejected "
        f"(fit p = {first.fit_p_value:.2g}; {seen})"
    )
