"""Scores of a causal LM on the reference tasks: greedy exact match and log-likelihood multiple choice."""

from __future__ import annotations

import re

import torch

_FINAL_ANSWER = re.compile(r"####\s*(-?\d+)")


def right_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (len(sequences), longest): each sequence left-aligned, padded with pad_id."""
    width = max(len(x) for x in sequences)
    ids = torch.full((len(sequences), width), pad_id)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, x in enumerate(sequences):
        ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    return ids, mask


def extract_final_answer(text: str) -> int | None:
    """The integer after the last ``####`` marker, or None when the text has none."""
    found = _FINAL_ANSWER.findall(text)
    return int(found[-1]) if found else None


@torch.no_grad()
def greedy_completions(model, tokenizer, prompts: list[str], max_new_tokens: int = 48, batch_size: int = 100):
    """Greedy continuations of ``prompts`` (left-padded batches, stopping at the end-of-text token)."""
    tokenizer.padding_side = "left"
    completions = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        completions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return completions


def exact_match(model, tokenizer, docs: list[dict], **kwargs) -> tuple[float, list[bool]]:
    """Fraction of AIME-style docs whose greedy final answer equals ``answer``, and the per-item results."""
    completions = greedy_completions(model, tokenizer, [d["question"] for d in docs], **kwargs)
    correct = [extract_final_answer(c) == d["answer"] for c, d in zip(completions, docs)]
    return sum(correct) / len(correct), correct


@torch.no_grad()
def continuation_logprobs(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 200) -> list[float]:
    """Summed log-probability of each continuation given its context (as lm-eval's ``loglikelihood``)."""
    results = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        contexts = [tokenizer(c)["input_ids"] for c, _ in chunk]
        wholes = [tokenizer(c + x)["input_ids"] for c, x in chunk]
        ids, mask = right_padded(wholes, tokenizer.pad_token_id)
        logprobs = torch.log_softmax(
            model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float(), -1
        )
        for row, (context, whole) in enumerate(zip(contexts, wholes)):
            targets = torch.tensor(whole[len(context) :], device=logprobs.device)
            positions = torch.arange(len(context) - 1, len(whole) - 1, device=logprobs.device)
            results.append(logprobs[row, positions, targets].sum().item())
    return results


def multiple_choice_accuracy(model, tokenizer, docs: list[dict]) -> tuple[float, list[bool]]:
    """Fraction of GPQA-style docs whose most likely choice is the correct one (lm-eval's ``acc``)."""
    pairs = [(d["question"], choice) for d in docs for choice in d["choices"]]
    scores = continuation_logprobs(model, tokenizer, pairs)
    correct = []
    for i, d in enumerate(docs):
        options = scores[4 * i : 4 * i + 4]
        correct.append(max(range(4), key=options.__getitem__) == d["answer"])
    return sum(correct) / len(correct), correct
