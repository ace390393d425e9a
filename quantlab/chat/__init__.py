"""Chat templates: the model's own and the named wrong ones a real host applies by mistake.

A serving stack turns a conversation into a prompt with a Jinja chat template; a host that applies the wrong one
costs accuracy without any change to the weights. The names ``quantlab`` knows:

* ``model``: the model's own template (its tokenizer's ``chat_template``): the right rendering;
* ``chatml``: ChatML tags (``<|im_start|>user\\n...<|im_end|>``), the generic template of many other models;
* ``final-only``: the model's own harmony template, with the assistant's turn opened directly in the ``final``
  channel, so the model never writes its analysis (a host that skips the reasoning channel);
* ``plain``: no chat format at all, the messages' text alone (a completions endpoint used naively);
* any other value is a path to a Jinja file.

Rendering goes through transformers' own renderer (``apply_chat_template``'s), so a prompt here is byte for byte
what transformers, lm-eval's ``--apply_chat_template`` and a server given the same template produce.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from quantlab.errors import UserError

REASONING_EFFORTS = ("low", "medium", "high")  # gpt-oss's, passed to the template as reasoning_effort
MODEL = "model"
NAMED = ("model", "chatml", "final-only", "plain")
_FILES = {"chatml": "chatml.jinja", "plain": "plain.jinja"}
# Appended to a harmony template: after the template's own generation prompt (<|start|>assistant) the final
# channel is opened, so generation starts at the answer. Jinja output concatenates, so the suffix changes nothing
# else of the rendering.
_FINAL_ONLY_SUFFIX = '\n{%- if add_generation_prompt %}{{- "<|channel|>final<|message|>" }}{%- endif %}'


def model_template(folder: Path) -> str | None:
    """The chat template a Hugging Face model folder ships (``chat_template.jinja``, or ``chat_template`` in
    ``tokenizer_config.json``), or None: read from the files, without loading the tokenizer."""
    import json

    jinja = Path(folder) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = Path(folder) / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def default_choice(folder: Path) -> str:
    """The template a model is prompted through unless told otherwise: its own when it has one (a chat model, as
    a serving stack prompts it), else none (``plain``, lm-eval's default)."""
    return MODEL if model_template(folder) else "plain"


def template_setting(choice: str) -> dict:
    """What an evaluation records of a template choice: its name, or a file's path and the hash of its text."""
    import hashlib

    if choice in NAMED:
        return {"chat_template": choice}
    source = template_source(choice, None)
    return {"chat_template": str(Path(choice)), "chat_template_sha256": hashlib.sha256(source.encode()).hexdigest()}


def template_source(choice: str, model_template: str | None) -> str:
    """The Jinja source a ``chat_template`` setting names, given the model's own template (None: it has none)."""
    if choice in (MODEL, "final-only"):
        if not model_template:
            raise UserError(f"chat template {choice!r}: the model has no chat template of its own; name a file")
        if choice == MODEL:
            return model_template
        if "<|channel|>" not in model_template:
            raise UserError("chat template 'final-only' needs a harmony template (channels); this model's has none")
        return model_template + _FINAL_ONLY_SUFFIX
    if choice in _FILES:
        return (files("quantlab.chat") / "templates" / _FILES[choice]).read_text()
    path = Path(choice)
    if not path.is_file():
        raise UserError(
            f"chat template {choice!r}: neither a name ({', '.join(NAMED)}) nor a Jinja file; give one of them"
        )
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read the chat template ({error}); give a UTF-8 Jinja file") from None


def render(
    source: str,
    messages: list[dict],
    reasoning_effort: str | None = None,
    add_generation_prompt: bool = True,
    tools: list[dict] | None = None,
) -> str:
    """The prompt ``source`` renders for ``messages`` (``reasoning_effort`` None: the template's default), with
    ``tools`` (OpenAI function tools) declared where given."""
    from jinja2 import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    extra: dict[str, Any] = {} if reasoning_effort is None else {"reasoning_effort": reasoning_effort}
    if tools is not None:
        extra["tools"] = tools
    try:
        # transformers annotates the return as str; it is (rendered conversations, generation indices)
        rendered: Any = render_jinja_template(
            conversations=[messages],
            chat_template=source,
            add_generation_prompt=add_generation_prompt,
            **extra,
        )
    except TemplateError as error:
        raise UserError(f"chat template: {error}") from None
    return rendered[0][0]
