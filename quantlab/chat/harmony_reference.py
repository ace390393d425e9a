"""A chat template held against openai-harmony's own rendering of the same conversation.

Harmony is gpt-oss's format, and openai-harmony is its reference renderer: vLLM renders gpt-oss chat requests
with it, while llama.cpp, transformers and every host that takes the Hugging Face route render with the Jinja
template. Where the two disagree (a header's order, a content type, a dropped analysis message) the model is
prompted differently depending on who serves it, which is the provider study's template failure. This module
builds the harmony ``Conversation`` of chat messages as vLLM does (``tools`` as the developer's function tools,
a tool's result as a message from ``functions.NAME`` to the assistant, calls with ``<|constrain|>json``),
renders it with openai-harmony, and compares the text with the template's, case by case.

openai-harmony needs the o200k_base vocabulary: from ``TIKTOKEN_ENCODINGS_BASE``, else ``.cache/tiktoken`` of
the checkout (``scripts/fetch_o200k.py`` writes it, checked against harmony's own hash).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from quantlab.chat import render
from quantlab.errors import UserError

VOCABULARY_FILE = "o200k_base.tiktoken"
CHECKOUT_VOCABULARY = Path(__file__).resolve().parents[2] / ".cache" / "tiktoken"


def vocabulary_folder() -> Path | None:
    """Where openai-harmony finds o200k_base here, or None (not written)."""
    named = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    for folder in ([Path(named)] if named else []) + [CHECKOUT_VOCABULARY]:
        if (folder / VOCABULARY_FILE).is_file():
            return folder
    return None


@cache
def encoding():
    """openai-harmony's gpt-oss encoding, loaded offline; one line saying what is missing otherwise."""
    try:
        import openai_harmony  # an optional reference (the dev extra): only this comparison needs it
    except ImportError:
        raise UserError("openai-harmony is not installed: pip install openai-harmony==0.0.8 (the dev extra)") from None
    folder = vocabulary_folder()
    if folder is None:
        raise UserError(
            f"openai-harmony's {VOCABULARY_FILE} is not here: run python scripts/fetch_o200k.py, or set "
            "TIKTOKEN_ENCODINGS_BASE to a folder holding it"
        )
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(folder)
    return openai_harmony.load_harmony_encoding(openai_harmony.HarmonyEncodingName.HARMONY_GPT_OSS)


@dataclass(frozen=True)
class SystemSettings:
    """What the system message carries besides the reasoning effort. The defaults are gpt-oss's (openai-harmony's
    ``SystemContent.new()``); a model trained on a shorter system message names none of them."""

    model_identity: str | None = "You are ChatGPT, a large language model trained by OpenAI."
    knowledge_cutoff: str | None = "2024-06"
    channels: bool = True  # the "# Valid channels" line (and the tools' channel rule)


REASONING_ONLY = SystemSettings(model_identity=None, knowledge_cutoff=None, channels=False)


def conversation(messages: list[dict], effort: str | None, tools: list[dict] | None, system: SystemSettings):
    """The harmony ``Conversation`` of chat ``messages``, as vLLM's chat route builds it."""
    import openai_harmony as h

    content = h.SystemContent(
        model_identity=system.model_identity,
        reasoning_effort=h.ReasoningEffort((effort or "medium").capitalize()),
        knowledge_cutoff=system.knowledge_cutoff,
        conversation_start_date=None,
        **({} if system.channels else {"channel_config": None}),
    )
    harmony_messages = [h.Message.from_role_and_content(h.Role.SYSTEM, content)]
    rest = messages
    instructions = messages[0]["content"] if messages and messages[0]["role"] in ("system", "developer") else None
    if instructions is not None:
        rest = messages[1:]
    if instructions or tools:
        developer = h.DeveloperContent.new()
        if instructions:
            developer = developer.with_instructions(instructions)
        if tools:
            developer = developer.with_function_tools(
                [
                    h.ToolDescription.new(
                        t["function"]["name"], t["function"].get("description", ""), t["function"].get("parameters")
                    )
                    for t in tools
                ]
            )
        harmony_messages.append(h.Message.from_role_and_content(h.Role.DEVELOPER, developer))
    call_names: dict[str, str] = {}
    last_call = ""
    for message in rest:
        role = message["role"]
        if role == "user":
            harmony_messages.append(h.Message.from_role_and_content(h.Role.USER, message["content"]))
        elif role == "assistant" and message.get("tool_calls"):
            if message.get("thinking"):
                harmony_messages.append(_assistant(message["thinking"], "analysis"))
            for call in message["tool_calls"]:
                function = call["function"]
                arguments = function["arguments"]
                text = arguments if isinstance(arguments, str) else json.dumps(arguments)
                last_call = call_names[call.get("id", "")] = function["name"]
                harmony_messages.append(
                    _assistant(text, "commentary")
                    .with_recipient(f"functions.{function['name']}")
                    .with_content_type("<|constrain|>json")
                )
        elif role == "assistant":
            if message.get("thinking"):
                harmony_messages.append(_assistant(message["thinking"], "analysis"))
            harmony_messages.append(_assistant(message["content"], "final"))
        elif role == "tool":
            name = call_names.get(message.get("tool_call_id", ""), last_call)
            author = h.Author.new(h.Role.TOOL, f"functions.{name}")
            harmony_messages.append(
                h.Message.from_author_and_content(author, message["content"])
                .with_channel("commentary")
                .with_recipient("assistant")
            )
        else:
            raise UserError(f"harmony has no role {role!r} for a chat message")
    return h.Conversation.from_messages(harmony_messages)


def _assistant(text: str, channel: str):
    import openai_harmony as h

    return h.Message.from_role_and_content(h.Role.ASSISTANT, text).with_channel(channel)


def harmony_text(
    messages: list[dict],
    effort: str | None,
    add_generation_prompt: bool,
    tools: list[dict] | None = None,
    system: SystemSettings = SystemSettings(),
) -> str:
    """openai-harmony's text of the conversation: a prompt ending in ``<|start|>assistant``, or (no generation
    prompt) the whole conversation as the model is trained on it, its last message ended by ``<|return|>`` and
    the last turn's analysis kept (harmony drops an earlier turn's)."""
    import openai_harmony as h

    enc = encoding()
    built = conversation(messages, effort, tools, system)
    if add_generation_prompt:
        tokens = enc.render_conversation_for_completion(built, h.Role.ASSISTANT)
    else:
        tokens = enc.render_conversation_for_training(built, h.RenderConversationConfig(auto_drop_analysis=False))
    return enc.decode_utf8(tokens)


@dataclass(frozen=True)
class Case:
    """One conversation to render both ways."""

    name: str
    messages: list[dict]
    effort: str | None = "high"
    add_generation_prompt: bool = True
    tools: list[dict] | None = None


@dataclass(frozen=True)
class Comparison:
    """Each case's two texts, and where the first difference is (None: identical)."""

    case: Case
    template_text: str
    harmony_text: str

    @property
    def first_difference(self) -> int | None:
        a, b = self.template_text, self.harmony_text
        if a == b:
            return None
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    def describe(self) -> str:
        if self.first_difference is None:
            return f"{self.case.name}: identical ({len(self.template_text)} characters)"
        at = self.first_difference
        return (
            f"{self.case.name}: differ at character {at}: template {self.template_text[max(0, at - 20) : at + 40]!r}, "
            f"harmony {self.harmony_text[max(0, at - 20) : at + 40]!r}"
        )


def standard_cases(question: str, answer: str, chain: str, tool: dict, arguments: dict) -> list[Case]:
    """The conversations a harmony template must render as harmony does: each effort and none, a developer
    message, an earlier turn (its analysis dropped), a whole training conversation, the tools declared, a call
    with its result, and the call's conversation answered."""
    user = {"role": "user", "content": question}
    call = {"id": "call_1", "type": "function", "function": {"name": tool["function"]["name"], "arguments": arguments}}
    called: list[dict] = [
        user,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": answer},
    ]
    return [
        *(Case(f"prompt, effort {effort}", [user], effort) for effort in ("low", "medium", "high")),
        Case("prompt, no effort named", [user], None),
        Case("developer message", [{"role": "developer", "content": "Answer with the number only."}, user]),
        Case(
            "an earlier turn",
            [user, {"role": "assistant", "content": answer, "thinking": chain}, {"role": "user", "content": question}],
        ),
        Case(
            "a whole conversation",
            [user, {"role": "assistant", "content": answer, "thinking": chain}],
            add_generation_prompt=False,
        ),
        Case("tools declared", [user], tools=[tool]),
        Case("a call and its result", called, tools=[tool]),
        Case(
            "a call answered",
            [*called, {"role": "assistant", "content": answer}],
            tools=[tool],
            add_generation_prompt=False,
        ),
    ]


def compare(template: str, cases: list[Case], system: SystemSettings = SystemSettings()) -> list[Comparison]:
    """The template's text and openai-harmony's for each case."""
    out = []
    for case in cases:
        ours = render(template, case.messages, case.effort, case.add_generation_prompt, tools=case.tools)
        theirs = harmony_text(case.messages, case.effort, case.add_generation_prompt, case.tools, system)
        out.append(Comparison(case, ours, theirs))
    return out
