"""Response shape, as OpenAI's gpt-oss compatibility test checks it: the fields every client reads, the finish
reasons (``stop`` for a turn that ended, ``length`` for one cut at max_tokens), and where the reasoning comes
back (``reasoning_content``, vLLM's older field, or ``reasoning``; harmony channels left in the content fail).
No statistics: each case passes or not, and every case must."""

from __future__ import annotations

from quantlab.stages.audit.checks.base import CHAT, FAIL, PASS, Check, Context
from quantlab.stages.audit.client import CouldNotCheck


class Shape(Check, name="shape"):
    runs_at = 60
    question = "Are the responses shaped as the OpenAI API and the gpt-oss compatibility test expect?"
    default_budget = 4
    minimum_budget = 3
    statistical = False  # every case must pass: no level to share

    def run(self, context: Context, budget: int):
        client = context.client
        probe = context.probes(1, offset=6)[0]
        cases: dict[str, str | None] = {}  # case -> None (passed) or what is wrong
        field = None
        if context.api == CHAT:
            ended = client.chat(probe.messages, max_tokens=96, temperature=0, reasoning_effort="high")
            cases["chat: object, role, content"] = _chat_fields(ended.raw)
            cases["chat: finish_reason stop"] = None if ended.finish_reason == "stop" else f"got {ended.finish_reason}"
            field = ended.reasoning_field
            # no reasoning at all is the template's or the effort's failing (their checks), not the shape's
            cases["chat: reasoning in its own field"] = (
                "the harmony channels are left in the content" if field == "content" else None
            )
            cut = client.chat(probe.messages, max_tokens=2, temperature=0, reasoning_effort="high")
            cases["chat: finish_reason length"] = None if cut.finish_reason == "length" else f"got {cut.finish_reason}"
        prompt = context.reference.prompt(probe.messages, "low")
        try:
            completion = client.complete(prompt, max_tokens=2, temperature=0)
        except CouldNotCheck as error:
            # a chat-only endpoint has no completions route to shape (the gpt-oss test asks for none)
            if context.api == CHAT and "HTTP 404" in str(error):
                completion = None
            else:
                raise
        if completion is not None:
            cases["completions: object, text"] = (
                None
                if completion.raw.get("object") == "text_completion"
                else f"object is {completion.raw.get('object')!r}"
            )
            cases["completions: finish_reason length"] = (
                None if completion.finish_reason == "length" else f"got {completion.finish_reason}"
            )
        failed = {case: why for case, why in cases.items() if why}
        return self.result(
            FAIL if failed else PASS,
            test="every case must pass (gpt-oss compatibility test's response checks)",
            statistic=float(len(failed)),
            statistic_name="cases failed",
            reason=("; ".join(f"{c}: {w}" for c, w in failed.items()) or f"{len(cases)} of {len(cases)} cases pass")
            + (f"; reasoning field: {field}" if field else ""),
            detail={"cases": {case: why or "pass" for case, why in cases.items()}, "reasoning_field": field},
        )


def _chat_fields(raw: dict) -> str | None:
    try:
        if raw.get("object") != "chat.completion":
            return f"object is {raw.get('object')!r}, not 'chat.completion'"
        message = raw["choices"][0]["message"]
        if message.get("role") != "assistant":
            return f"role is {message.get('role')!r}"
        usage = raw.get("usage") or {}
        if not all(isinstance(usage.get(k), int) for k in ("prompt_tokens", "completion_tokens")):
            return "usage lacks integer prompt_tokens / completion_tokens"
    except (KeyError, IndexError, TypeError, AttributeError):
        raise CouldNotCheck("chat/completions: malformed choices") from None
    return None
