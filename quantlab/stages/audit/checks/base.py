"""What every check shares: the audit's context (the endpoint, the local models, the questions) and the
registry the checks enter by subclassing ``Check``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from quantlab.chat import REASONING_EFFORTS, harmony
from quantlab.plugins import Probe
from quantlab.registry import Registered
from quantlab.stages.audit.client import CHAT, COMPLETIONS, EndpointClient
from quantlab.stages.audit.local import LocalModel
from quantlab.stages.audit.trusted import TrustedEndpoint
from quantlab.store.records import AuditCheck

PASS, FAIL, COULD_NOT_CHECK, NOT_APPLICABLE = "pass", "fail", "could not check", "not applicable"
EFFORTS = REASONING_EFFORTS
TURN_TOKENS = 96  # enough for the longest turn of the reference's tasks at high effort


@dataclass(frozen=True)
class SeenTurn:
    """One greedy turn the endpoint gave: the question, the effort requested (None: none), the token limit,
    whether the audit rendered the prompt itself (the completions route: no host template or effort applies),
    and the turn's text (``turn_text``)."""

    probe: Probe
    effort: str | None
    max_tokens: int
    rendered_here: bool
    text: str


@dataclass
class Context:
    """One audit's shared state: the endpoint's client, the reference and candidate models in-process, the
    questions (``probes(count, offset)``: the same questions for the same seed), the API the checks ask through,
    the level each test is run at (the audit's level shared among its tests), and the weights check's
    calibration."""

    client: EndpointClient
    reference: LocalModel
    candidates: list[LocalModel]
    questions: Any  # (count, seed) -> list[Probe]
    api: str
    seed: int
    alpha: float
    repeats: int = 1  # runs per accuracy question (1: greedy; more: temperature 1)
    calibration: Any = None  # quantlab.stages.audit.calibration.Calibration
    # The local model the endpoint's weights look like (the weights check's choice; the reference until then):
    # the effort, template and sampling checks compare against it, so that a quantized host is not also blamed
    # for a template it renders right.
    served_like: LocalModel | None = None
    # Whether the endpoint's greedy turns reproduce (the sampling check's temperature-0 test): the template and
    # effort checks compare greedy turns and cannot, when they do not.
    greedy_reproducible: bool = True
    # Whether the weights check's model explains the endpoint's distributions to a faithful server's noise (not
    # so for a K-quant GGUF, whose engine also rounds the activations): then a faithful host's allowance of
    # greedy disagreements holds against it.
    weights_explained: bool = True
    # The rendering the endpoint's turns match (the template check's choice): the effort check renders with it.
    template_like: str = "model"
    # A differential audit (--reference-url): the endpoint the user trusts, asked what the audited one is asked;
    # the local reference then only renders prompts (its template and tokenizer; its weights are never loaded).
    trusted: TrustedEndpoint | None = None
    # What the cause ranking (``stages.audit.causes``) weighs every known departure against: the endpoint's
    # greedy turns, whether its greedy turns varied between identical requests, and each local model's
    # per-prompt KL to it (the weights check's; keyed by the model, or by the reference in a differential audit).
    seen: list[SeenTurn] = field(default_factory=list)
    greedy_varied: list[bool] = field(default_factory=list)
    weights_kl: dict[str, list[float]] = field(default_factory=dict)

    @property
    def weights_model(self) -> LocalModel:
        return self.served_like or self.reference

    def probes(self, count: int, offset: int = 0) -> list[Probe]:
        """``count`` questions; each check draws its own (``offset``) so that no two share theirs."""
        return self.questions(count, self.seed * 1000 + offset)

    def prompt(self, probe: Probe, effort: str | None, template: str | None = None) -> str:
        """What the model the weights look like is prompted with, rendered as the endpoint seems to render."""
        return self.weights_model.prompt(probe.messages, effort, template or self.template_like)

    def ask(self, probe: Probe, effort: str | None, max_tokens: int = TURN_TOKENS, **sampling) -> harmony.Turn:
        """The endpoint's turn for ``probe`` at ``effort`` (None: none asked) through the audit's API: the chat
        route, or the completions route with the prompt rendered here by the reference's own template."""
        return self.client.turn(self.api, self.reference, probe, effort, max_tokens, **sampling)

    def saw(self, probes: list[Probe], efforts: list[str | None], turns: list[harmony.Turn], max_tokens: int) -> None:
        """Keeps the endpoint's greedy ``turns`` (to ``probes`` at ``efforts``) for the cause ranking."""
        for probe, effort, turn in zip(probes, efforts, turns):
            self.seen.append(SeenTurn(probe, effort, max_tokens, self.api == COMPLETIONS, turn_text(turn)))

    def reference_turns(
        self,
        probes: list[Probe],
        effort: str | None,
        template: str | None = None,
        max_tokens: int = TURN_TOKENS,
        as_served: bool = True,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[harmony.Turn]:
        """What the endpoint's turns are compared with, question by question: the trusted endpoint's answers to
        the same requests (a differential audit; ``template``: a named rendering it is sent through its
        completions route instead of its own), else the local model's turns, rendered with ``template`` (None:
        as the endpoint seems to render) from the model the weights look like (``as_served``) or the reference
        itself. Sampled turns are seeded: one seed for the local batch, ``seed + i`` for the i-th request."""
        template = template or self.template_like
        if self.trusted is not None:
            return self.trusted.turns(probes, effort, template, max_tokens, temperature=temperature, seed=seed)
        model = self.weights_model if as_served else self.reference
        prompts = [model.prompt(p.messages, effort, template) for p in probes]
        return model.turns(prompts, max_tokens, temperature=temperature, seed=seed)


GREEDY_UNRELIABLE = (
    "temperature 0 does not reproduce on this endpoint (the sampling check): greedy turns cannot be compared"
)


class Check(Registered):
    kind: ClassVar[str] = "check"
    _entries: ClassVar[dict[str, Registered]] = {}
    question: ClassVar[str]
    default_budget: ClassVar[int]  # queries, at the audit's default total
    minimum_budget: ClassVar[int]  # below this the check does not run (it says so)
    apis: ClassVar[tuple[str, ...]] = (CHAT, COMPLETIONS)
    not_applicable: ClassVar[str] = ""  # why the check has nothing to ask through another API
    compares_greedy_turns: ClassVar[bool] = False  # meaningless where temperature 0 does not reproduce
    statistical: ClassVar[bool] = True  # a test at a level (the audit shares its level among these)
    # Where the check runs in an audit: after the checks whose findings it compares against (``Context``'s
    # served_like, greedy_reproducible, template_like), so that one distortion fails its own check and not
    # every check after it.
    runs_at: ClassVar[int]

    @classmethod
    def in_run_order(cls, names: list[str] | None = None) -> list[str]:
        """``names`` (every registered check when None), each once, in the order an audit runs them; a one-line
        error naming the known checks for an unknown one."""
        chosen = cls.names() if names is None else list(dict.fromkeys(names))
        return sorted(chosen, key=lambda name: cls.lookup(name).runs_at)

    def run(self, context: Context, budget: int) -> AuditCheck:
        raise NotImplementedError

    def result(self, verdict: str, **fields) -> AuditCheck:
        return AuditCheck(name=self.name, question=self.question, verdict=verdict, **fields)


def turn_text(turn: harmony.Turn) -> str:
    """A turn as one text (the reasoning, a separator, the final answer): what two turns are compared by."""
    return turn.reasoning.strip() + "\n=> " + turn.final.strip()


def same_turn(a: str, b: str) -> bool:
    """Whether two turns' texts agree (one cut short by the token limit agrees with the other's beginning)."""
    return a == b or (min(len(a), len(b)) >= 8 and (a.startswith(b) or b.startswith(a)))
