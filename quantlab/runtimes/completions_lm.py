"""lm-eval's OpenAI-compatible completions client, with the chat template rendered on the client's side.

A completions endpoint takes text: a client that prompts a chat model through one renders the conversation
itself. lm-eval's client, given text prompts (``tokenized_requests=False``), would send the conversation as a JSON
string instead; this one renders it with the evaluation's template and effort, as the hf runtime does, so that the
endpoint and the in-process runtimes see the same prompt.
"""

from __future__ import annotations

from lm_eval.models.openai_completions import LocalCompletionsAPI

from quantlab.runtimes.prompts import render_chat


class RenderedCompletionsLM(LocalCompletionsAPI):
    def __init__(self, *, chat_template: str | None, chat_template_args: dict, **kwargs):
        super().__init__(**kwargs)
        self.template, self.template_args = chat_template, dict(chat_template_args)

    def chat_template(self, chat_template=False) -> str | None:
        return self.template

    def apply_chat_template(self, chat_history, add_generation_prompt=True) -> str:
        return render_chat(self.tokenizer, self.template, self.template_args, chat_history, add_generation_prompt)
