"""The evaluation text a measurement runs over, as token windows with answer- and analysis-token masks.

Default: the reference model's own validation split, one conversation per row at each reasoning effort, in its
chat format. The answer tokens are the final channel's answer: on task text the question tokens are
unpredictable by construction, and their loss would hide the damage done to the answers. The analysis channel's
tokens (the worked chain, where reasoning drifts) are marked separately. Any UTF-8 text file (no answer mask) or a
JSONL file of ``{"question", "solution"}`` / ``{"text"}`` records can replace it, and the plugin's specs name other
task text (``zoo:aime-style:SPLIT:EFFORT``: one split and effort; ``zoo:chat-corpus:SPLIT``: conversations packed
one after another, as a corpus is read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from quantlab.errors import UserError
from quantlab.plugins import ANALYSIS, ANSWER, Document, registry


@dataclass
class EvaluationText:
    name: str
    tokens: torch.Tensor  # (rows, length) token ids, right-padded
    attention: torch.Tensor  # (rows, length) 1 for real tokens, 0 for padding
    answer_mask: torch.Tensor  # (rows, length) bool: the token at this position is an answer token
    analysis_mask: torch.Tensor | None = None  # (rows, length) bool: a token of the analysis channel

    @property
    def predicted_positions(self) -> int:
        return int(self.attention[:, 1:].sum())


def _documents(text_file: Path | str | None, count: int) -> tuple[str, list[Document]]:
    """(name, documents); plain text is one long context with no answer part."""

    spec = None if text_file is None else str(text_file)
    plugin_text = registry().measure_text(spec)  # zoo:aime-style:SPLIT:EFFORT, or the default text
    if plugin_text is not None:
        return plugin_text.documents(spec, count)
    if text_file is None:
        raise UserError("--text: no default measurement text is registered; give a .txt or .jsonl file")
    path = Path(text_file)
    if not path.is_file():
        raise UserError(f"--text {path}: no such file")
    if path.suffix == ".jsonl":
        docs = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"--text {path}:{number}: not a JSON line") from None
            if "question" in record and "solution" in record:
                docs.append(Document.of(record["question"], record["solution"]))
            elif "text" in record:
                docs.append(Document.of(record["text"]))
            else:
                raise UserError(f"--text {path}:{number}: a record needs question and solution, or text")
        return str(path), docs
    return str(path), [Document.of(path.read_text(encoding="utf-8", errors="replace"))]


def _tokens_with_roles(tokenizer, document: Document) -> tuple[list[int], list[str]]:
    """The document's tokens, each with the role of the part its first character is in (added tokens such as a
    BOS: context), and an end-of-text token unless the document already ends with it."""
    text = document.text
    encoded = tokenizer(text, return_offsets_mapping=True)
    ends, role_at = [], []
    position = 0
    for role, part in document.parts:
        position += len(part)
        ends.append(position)
        role_at.append(role)
    roles = []
    for first, last in encoded["offset_mapping"]:
        index = next((i for i, end in enumerate(ends) if first < end), len(ends) - 1)
        roles.append(role_at[index] if last > first else "context")
    ids = list(encoded["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
        roles.append("context")
    return ids, roles


def evaluation_text(
    tokenizer, text_file: Path | str | None = None, max_tokens: int = 16384, length: int = 128
) -> EvaluationText:
    """About ``max_tokens`` tokens: one document per row (task text: a model sees one problem at a time, as
    in training and evaluation), or consecutive windows of ``length`` tokens of a plain text."""
    name, docs = _documents(text_file, count=max(64, max_tokens // 20))
    rows: list[tuple[list[int], list[str]]] = []
    total = 0
    if all(doc.has_answer for doc in docs):
        for doc in docs:
            ids, roles = _tokens_with_roles(tokenizer, doc)
            rows.append((ids[:length], roles[:length]))
            total += len(rows[-1][0])
            if total >= max_tokens:
                break
    else:
        ids = []
        for doc in docs:
            ids += _tokens_with_roles(tokenizer, doc)[0]
        ids = ids[: max_tokens - max_tokens % length]
        rows = [(ids[i : i + length], ["context"] * length) for i in range(0, len(ids) - length + 1, length)]
    if not rows:
        raise UserError(f"evaluation text {name}: fewer than {length} tokens")
    width = max(len(ids) for ids, _ in rows)
    tokens = torch.full((len(rows), width), tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    answer = torch.zeros((len(rows), width), dtype=torch.bool)
    analysis = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (ids, roles) in enumerate(rows):
        tokens[r, : len(ids)] = torch.tensor(ids)
        attention[r, : len(ids)] = 1
        answer[r, : len(ids)] = torch.tensor([role == ANSWER for role in roles])
        analysis[r, : len(ids)] = torch.tensor([role == ANALYSIS for role in roles])
    return EvaluationText(name, tokens, attention, answer, analysis if bool(analysis.any()) else None)


LLAMA_PERPLEXITY = "llama-perplexity"
SCORINGS = ("rows", LLAMA_PERPLEXITY)


def llama_perplexity_text(tokenizer, text_file: Path | str, n_ctx: int, max_tokens: int = 16384) -> EvaluationText:
    """The text scored exactly as llama.cpp's ``llama-perplexity`` (and its ``--kl-divergence``) scores it: the
    whole file tokenized once, cut into consecutive chunks of ``n_ctx`` tokens (the tail that fills no chunk
    dropped), the first token of each chunk replaced by BOS when the tokenizer adds one, and only the second
    half of each chunk scored: the logits at positions n_ctx/2 ... n_ctx-2 predicting the tokens after them
    (n_ctx - 1 - n_ctx/2 per chunk; tools/perplexity/perplexity.cpp, ``first = n_ctx/2``). The scored tokens
    are the text's "answer tokens", so every statistic over them is the one llama.cpp reports."""
    path = Path(text_file)
    if not path.is_file():
        raise UserError(f"--text {path}: no such file (--scoring {LLAMA_PERPLEXITY} takes a plain text file)")
    ids = tokenizer(path.read_text(encoding="utf-8", errors="replace"))["input_ids"]
    chunks = min(len(ids), max_tokens) // n_ctx
    if len(ids) < 2 * n_ctx or chunks < 1:
        raise UserError(
            f"--text {path}: {len(ids)} tokens; --scoring {LLAMA_PERPLEXITY} needs at least 2 x --ctx "
            f"({2 * n_ctx}) tokens, as llama-perplexity does"
        )
    tokens = torch.tensor(ids[: chunks * n_ctx], dtype=torch.long).reshape(chunks, n_ctx)
    if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None:
        tokens[:, 0] = tokenizer.bos_token_id
    scored = torch.zeros_like(tokens, dtype=torch.bool)
    scored[:, n_ctx // 2 + 1 :] = True  # targets of the logits at first = n_ctx/2 ... n_ctx-2
    name = f"{path} (llama-perplexity: {chunks} chunks of {n_ctx}, second half scored)"
    return EvaluationText(name, tokens, torch.ones_like(tokens), scored)


def measurement_text(tokenizer, baseline, text_file, max_tokens: int, llama_perplexity_ctx: int | None = None):
    """The token rows a measurement reads (``quantlab.stages.measure.text``)."""
    if llama_perplexity_ctx:
        return llama_perplexity_text(tokenizer, text_file, llama_perplexity_ctx, max_tokens)
    return evaluation_text(
        tokenizer, text_file, max_tokens=max_tokens, length=min(128, baseline.config.max_position_embeddings)
    )
