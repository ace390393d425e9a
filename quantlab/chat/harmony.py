"""A generated assistant turn in harmony's shape, split into its channels.

gpt-oss (and the lab's reference model, trained on the same shape) answers a prompt that ends in
``<|start|>assistant`` with messages such as::

    <|channel|>analysis<|message|>CHAIN<|end|><|start|>assistant<|channel|>final<|message|>ANSWER<|return|>

A serving stack's chat API hands the analysis back as a reasoning field and the final channel as the content;
an audit that reads a completions endpoint's raw text splits it the same way. Text with no channel markers at
all (a prompt that opened the final channel itself, a model that ignores the format) is all final.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

START, CHANNEL, MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
END_MARKERS = ("<|end|>", "<|return|>", "<|endoftext|>", "<|call|>")
# A message ends at <|end|>; what a harmony-aware server appends when the model ended an analysis message there
# and the turn goes on to its next message.
MESSAGE_END = "<|end|>"
NEXT_ASSISTANT_MESSAGE = "<|end|><|start|>assistant"
# Where a chat API returns the analysis channel: vLLM's older and newer names; OpenAI's gpt-oss test reads either.
REASONING_FIELDS = ("reasoning_content", "reasoning")
MAX_MESSAGES = 5  # messages a turn may hold (analysis ones before its final one)
_END = re.compile("|".join(re.escape(marker) for marker in END_MARKERS))


@dataclass(frozen=True)
class Turn:
    """An assistant turn's channels: the analysis (reasoning) text, the final text, and whether it has a final
    channel at all (a turn cut off in its analysis has none)."""

    reasoning: str
    final: str
    has_final: bool


def split_turn(text: str) -> Turn:
    """The channels of the generated text ``text`` (everything after the prompt's ``<|start|>assistant``)."""
    if MESSAGE not in text:
        return Turn("", _END.split(text)[0].strip(), True)
    reasoning: list[str] = []
    final: list[str] = []
    for message in text.split(START):
        header, separator, body = message.partition(MESSAGE)
        if not separator:
            continue
        body = _END.split(body)[0]
        channel = header.partition(CHANNEL)[2].strip()
        (final if channel == "final" else reasoning).append(body)
    return Turn("\n".join(reasoning), "".join(final).strip(), bool(final))


def turn_goes_on(generated: str, stopped: bool) -> bool:
    """Whether a turn that stopped at a message's end (``stopped``: not cut by the token limit) goes on with
    another assistant message: it has written a channel message, and none of them was the final one."""
    return stopped and MESSAGE in generated and not split_turn(generated).has_final
