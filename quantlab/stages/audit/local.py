"""The audit's side of each comparison: the reference (and each candidate) run in-process, as the lab runs it.

What the endpoint answers is compared with what these models answer to the same request: their greedy or sampled
turns under a given template and effort, and their next-token distributions along the tokens the endpoint
generated. Computed in float32 (the reference the engines are measured against).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from quantlab.chat import harmony, model_template, render, template_source
from quantlab.models.loading import load_config_and_tokenizer, load_model
from quantlab.runtimes.sessions import TransformersSession


@dataclass
class LocalModel:
    """A subject loaded in-process: ``name`` (a variant's or the model source's), its Hugging Face folder."""

    name: str
    folder: Path
    greedy_turns: dict[tuple[str, int], harmony.Turn] = field(default_factory=dict, repr=False)

    @cached_property
    def model(self):
        model, tokenizer = load_model(self.folder, dtype=torch.float32)
        self.__dict__.setdefault("tokenizer", tokenizer)  # the one it loaded, unless read already (cached_property)
        return model

    @cached_property
    def tokenizer(self):
        # apart from the weights: a differential audit renders prompts and maps token texts with it, and never
        # loads the model
        return load_config_and_tokenizer(self.folder)[1]

    @cached_property
    def own_template(self) -> str | None:
        return model_template(self.folder)

    def prompt(
        self, messages: list[dict], effort: str | None, template: str = "model", tools: list[dict] | None = None
    ) -> str:
        """The prompt a host renders for ``messages`` with ``template`` and ``effort`` (None: none passed), with
        ``tools`` declared where given."""
        return render(template_source(template, self.own_template), messages, effort, tools=tools)

    @cached_property
    def token_ids_by_text(self) -> dict[str, int]:
        """Token id of each token's text as a server returns it (tokens sharing a text are left out)."""
        seen: dict[str, list[int]] = {}
        for token_id in range(len(self.tokenizer)):
            seen.setdefault(self.tokenizer.decode([token_id]), []).append(token_id)
        return {text: ids[0] for text, ids in seen.items() if len(ids) == 1}

    @cached_property
    def message_end_ids(self) -> list[int]:
        """The ids of the markers that end a message short of the turn (``<|end|>``; ``<|call|>``, where the
        vocabulary has it), for generation to stop at."""
        ids = [self.tokenizer(marker, add_special_tokens=False)["input_ids"] for marker in harmony.MESSAGE_ENDS]
        return [found[0] for found in ids if len(found) == 1]

    @cached_property
    def session(self) -> TransformersSession:
        return TransformersSession(self.model, self.tokenizer)

    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int | list[int],
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[tuple[str, int, bool]]:
        """Each prompt's next message (``Session.generate``), stopping at a message's end as well as at the end
        of text. ``max_new_tokens``: one limit, or one per prompt."""
        limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        stops = [self.tokenizer.eos_token_id, *self.message_end_ids]
        return self.session.generate(prompts, limits, stops, temperature, top_p, seed)

    def turns(self, prompts: list[str], max_new_tokens: int, **sampling) -> list[harmony.Turn]:
        """Each prompt's assistant turn as a harmony-aware server generates it (``chat_front``'s rule): message by
        message, going on after an analysis message's end, within ``max_new_tokens`` in all. Greedy turns are
        kept: the cause ranking asks again for many a check asked already."""
        if sampling.get("temperature", 0.0) > 0:
            return self._generated_turns(prompts, max_new_tokens, **sampling)
        missing = list(dict.fromkeys(p for p in prompts if (p, max_new_tokens) not in self.greedy_turns))
        if missing:
            for prompt, turn in zip(missing, self._generated_turns(missing, max_new_tokens, **sampling)):
                self.greedy_turns[(prompt, max_new_tokens)] = turn
        return [self.greedy_turns[(p, max_new_tokens)] for p in prompts]

    def _generated_turns(self, prompts: list[str], max_new_tokens: int, **sampling) -> list[harmony.Turn]:
        texts = [""] * len(prompts)
        budgets = [max_new_tokens] * len(prompts)
        active = list(range(len(prompts)))
        for _ in range(harmony.MAX_MESSAGES):
            if not active:
                break
            step = self.generate([prompts[i] + texts[i] for i in active], [budgets[i] for i in active], **sampling)
            going_on = []
            for i, (text, used, stopped) in zip(active, step):
                texts[i] += text
                budgets[i] -= used
                if budgets[i] > 0 and harmony.turn_goes_on(texts[i], stopped):
                    texts[i] += harmony.NEXT_ASSISTANT_MESSAGE
                    going_on.append(i)
            active = going_on
        return [harmony.split_turn(text) for text in texts]

    def next_token_logits(self, prompt: str, generated: list[int]) -> torch.Tensor:
        """(len(generated), vocabulary): the logits before each generated token, teacher-forced after ``prompt``."""
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        logits = self.session.logits(prompt_ids + generated)
        return logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(generated)]
