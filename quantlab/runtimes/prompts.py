"""Prompts as the runtimes that take text are sent them: lm-eval's chat history rendered with a template."""

from __future__ import annotations


def render_chat(tokenizer, template: str | None, template_args: dict, history, add_generation_prompt: bool) -> str:
    """lm-eval's chat history rendered with an evaluation's template and effort, as lm-eval's HFLM renders it: what
    the runtimes that take text (llama.cpp in-process, a completions endpoint) are sent."""
    return tokenizer.apply_chat_template(
        history,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=not add_generation_prompt,
        **({"chat_template": template} | template_args),
    )
