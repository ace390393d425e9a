"""A differential audit's reference: an endpoint the user trusts (``quantlab audit URL --reference-url TRUSTED``).

Most users cannot run the reference model in-process; they can query a host they trust (their own vLLM, the
vendor's API). Each check then asks the trusted endpoint the requests it asks the audited one and compares the
two answers with the test it uses against a local reference. The local model is still needed for what only
the client side knows, never for its weights: the audit's questions, the chat template that renders a prompt for
a completions route (and the wrong renderings a host applies), and the tokenizer that maps a server's token
texts to ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantlab.chat import MODEL, harmony
from quantlab.plugins import Probe
from quantlab.stages.audit.client import CouldNotCheck, EndpointClient
from quantlab.stages.audit.local import LocalModel


@dataclass
class TrustedEndpoint:
    """The trusted endpoint's client (its queries counted apart from the audited endpoint's budget), the route
    its turns are asked through (``--reference-api``), and the local model that renders prompts for it."""

    client: EndpointClient
    api: str
    renderer: LocalModel
    greedy_turns: dict[tuple, harmony.Turn] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return f"{self.client.model} at {self.client.base_url}"

    def turns(
        self,
        probes: list[Probe],
        effort: str | None,
        template: str,
        max_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[harmony.Turn]:
        """The trusted endpoint's turn for each probe: through its own route when ``template`` is the model's
        (it renders as it always does), else through its completions route with the prompt rendered here with
        that wrong template (what the audited host would have sent its engine), turned into a chat turn by a
        chat host's rule. Sampled requests are seeded ``seed + i``."""

        def ask(job: tuple[int, Probe]) -> harmony.Turn:
            i, probe = job
            sampling: dict[str, Any] = {"temperature": temperature} | ({"seed": seed + i} if temperature > 0 else {})
            if template == MODEL:
                return self.client.turn(self.api, self.renderer, probe, effort, max_tokens, **sampling)
            return self.rendered_turn(self.renderer.prompt(probe.messages, effort, template), max_tokens, **sampling)

        if temperature > 0:
            return self.map(ask, list(enumerate(probes)))
        # greedy turns are kept: the cause ranking asks again for many a check asked already
        key = (effort, template, max_tokens)
        missing = [(i, p) for i, p in enumerate(probes) if (*key, p.question) not in self.greedy_turns]
        for (_, probe), turn in zip(missing, self.map(ask, missing)):
            self.greedy_turns[(*key, probe.question)] = turn
        return [self.greedy_turns[(*key, p.question)] for p in probes]

    def rendered_turn(self, prompt: str, max_tokens: int, **sampling) -> harmony.Turn:
        """The turn a harmony-aware chat host makes of ``prompt`` on this engine's completions route (the chat
        front's rule, ``runtimes.chat_front``): message by message, each stopped at its end, going on after an
        analysis message, within ``max_tokens`` in all."""
        generated, budget = "", max_tokens
        for _ in range(harmony.MAX_MESSAGES):
            answer = self.client.complete(
                prompt + generated,
                max_tokens=budget,
                stop=list(harmony.MESSAGE_ENDS),
                skip_special_tokens=False,
                **sampling,
            )
            budget -= int((answer.raw.get("usage") or {}).get("completion_tokens", 0))
            generated += answer.text
            if budget <= 0 or not harmony.turn_goes_on(generated, answer.finish_reason == "stop"):
                break
            generated += harmony.NEXT_ASSISTANT_MESSAGE
        return harmony.split_turn(generated)

    def map(self, function, items: list) -> list:
        """``client.map``, with a failure of the trusted endpoint named as its own (not the audited one's)."""
        try:
            return self.client.map(function, items)
        except CouldNotCheck as error:
            raise CouldNotCheck(f"the trusted endpoint {self.client.base_url}: {error}") from None
