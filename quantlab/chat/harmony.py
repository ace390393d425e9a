"""A generated assistant turn in harmony's shape, split into its channels.

gpt-oss (and the lab's reference model, trained on the same shape) answers a prompt that ends in
``<|start|>assistant`` with messages such as::

    <|channel|>analysis<|message|>CHAIN<|end|><|start|>assistant<|channel|>final<|message|>ANSWER<|return|>

A serving stack's chat API hands the analysis back as a reasoning field and the final channel as the content;
an audit that reads a completions endpoint's raw text splits it the same way. Text with no channel markers at
all (a prompt that opened the final channel itself, a model that ignores the format) is all final.

A message addressed to a tool is a call, and ends the turn (at ``<|call|>``)::

    <|channel|>commentary to=functions.calculator <|constrain|>json<|message|>{"expression": "1+2"}<|call|>

The recipient may also stand in the role part of the header (``assistant to=functions.calculator<|channel|>
commentary json``), as gpt-oss's Hugging Face template writes it; both are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

START, CHANNEL, MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
END_MARKERS = ("<|end|>", "<|return|>", "<|endoftext|>", "<|call|>")
# A message ends at <|end|>; what a harmony-aware server appends when the model ended an analysis message there
# and the turn goes on to its next message.
MESSAGE_END = "<|end|>"
MESSAGE_ENDS = (MESSAGE_END, "<|call|>")  # a message's end short of the turn's (<|return|>): analysis, a call
NEXT_ASSISTANT_MESSAGE = "<|end|><|start|>assistant"
# Where a chat API returns the analysis channel: vLLM's older and newer names; OpenAI's gpt-oss test reads either.
REASONING_FIELDS = ("reasoning_content", "reasoning")
MAX_MESSAGES = 5  # messages a turn may hold (analysis ones before its final one)
_END = re.compile("|".join(re.escape(marker) for marker in END_MARKERS))


_RECIPIENT = re.compile(r"\bto=(\S+?)(?=\s|<\||$)")
FUNCTIONS = "functions."  # the namespace of the developer's function tools


@dataclass(frozen=True)
class ToolCall:
    """A message the assistant addressed to a tool: the recipient (``functions.calculator``), the content type
    its header names (``json``) and the arguments' text, unparsed."""

    recipient: str
    content_type: str
    arguments: str

    @property
    def function(self) -> str | None:
        """The function tool's name, for a recipient in the ``functions`` namespace."""
        return self.recipient.removeprefix(FUNCTIONS) if self.recipient.startswith(FUNCTIONS) else None


@dataclass(frozen=True)
class Turn:
    """An assistant turn's channels: the analysis (reasoning) text, the final text, whether it has a final
    channel at all (a turn cut off in its analysis has none), and the tool calls it made."""

    reasoning: str
    final: str
    has_final: bool
    tool_calls: tuple[ToolCall, ...] = ()


def _tool_call(header: str, body: str) -> ToolCall | None:
    """The call a message with ``header`` makes, if it names a recipient."""
    match = _RECIPIENT.search(header)
    if match is None:
        return None
    rest = (header[: match.start()] + header[match.end() :]).replace("<|constrain|>", " ")
    channel_part = rest.partition(CHANNEL)[2]
    words = channel_part.split()
    return ToolCall(match.group(1), words[1] if len(words) > 1 else "", body.strip())


def split_turn(text: str) -> Turn:
    """The channels of the generated text ``text`` (everything after the prompt's ``<|start|>assistant``)."""
    if MESSAGE not in text:
        return Turn("", _END.split(text)[0].strip(), True)
    reasoning: list[str] = []
    final: list[str] = []
    calls: list[ToolCall] = []
    for message in text.split(START):
        header, separator, body = message.partition(MESSAGE)
        if not separator:
            continue
        body = _END.split(body)[0]
        call = _tool_call(header, body)
        if call is not None:
            calls.append(call)
            continue
        channel = header.partition(CHANNEL)[2].strip()
        (final if channel == "final" else reasoning).append(body)
    return Turn("\n".join(reasoning), "".join(final).strip(), bool(final), tuple(calls))


def turn_goes_on(generated: str, stopped: bool) -> bool:
    """Whether a turn that stopped at a message's end (``stopped``: not cut by the token limit) goes on with
    another assistant message: it has written a channel message, and none of them was the final one or a call
    (a call ends the turn: the tool answers next)."""
    if not stopped or MESSAGE not in generated:
        return False
    turn = split_turn(generated)
    return not turn.has_final and not turn.tool_calls
