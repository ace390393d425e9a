"""Scores of a causal LM on the reference tasks: greedy exact match and log-likelihood multiple choice."""

from __future__ import annotations

import re

import torch

# The final channel's opening, with its special tokens or (decoded with skip_special_tokens) without them.
_FINAL_CHANNEL = re.compile(r"(?:<\|channel\|>)?final(?:<\|message\|>)?")
_END_OF_MESSAGE = re.compile(r"<\|(?:return|end|endoftext)\|>")


def right_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (len(sequences), longest): each sequence left-aligned, padded with pad_id."""
    width = max(len(x) for x in sequences)
    ids = torch.full((len(sequences), width), pad_id)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, x in enumerate(sequences):
        ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    return ids, mask


def final_answer(response: str) -> int | None:
    """The integer the response gives in its final channel, or None.

    The final channel's text is what follows the last ``final`` channel opening, or the whole response when it
    has none (a prompt that opened the final channel itself); it ends at the message's end marker. It must be an
    integer and nothing else: a chain cut off mid-way, or an answer buried in other text, gives None.
    """
    content = _FINAL_CHANNEL.split(response)[-1]
    content = _END_OF_MESSAGE.split(content)[0].strip()
    return int(content) if re.fullmatch(r"-?\d+", content) else None


@torch.no_grad()
def greedy_completions(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 64, batch_size: int = 100, stop_at_call: bool = False
):
    """Greedy continuations of rendered ``prompts`` (left-padded batches, stopping at the end of the assistant's
    turn, or also at a tool call's ``<|call|>``), decoded with their special tokens."""
    stops = [tokenizer.eos_token_id] + ([tokenizer.convert_tokens_to_ids("<|call|>")] if stop_at_call else [])
    tokenizer.padding_side = "left"
    completions = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        batch = {k: v.to(model.device) for k, v in batch.items()}
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stops,
        )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        completions += [
            text.replace(tokenizer.pad_token, "")
            for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=False)
        ]
    return completions


def exact_match(model, tokenizer, prompts: list[str], answers: list[int], **kwargs) -> tuple[float, list[bool]]:
    """Fraction of rendered prompts whose greedy final answer equals its answer, and the per-item results."""
    completions = greedy_completions(model, tokenizer, prompts, **kwargs)
    correct = [final_answer(c) == a for c, a in zip(completions, answers)]
    return sum(correct) / len(correct), correct


@torch.no_grad()
def continuation_logprobs(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 200) -> list[float]:
    """Summed log-probability of each continuation given its context (as lm-eval's ``loglikelihood``)."""
    results = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        contexts = [tokenizer(c, add_special_tokens=False)["input_ids"] for c, _ in chunk]
        wholes = [tokenizer(c + x, add_special_tokens=False)["input_ids"] for c, x in chunk]
        ids, mask = right_padded(wholes, tokenizer.pad_token_id)
        logprobs = torch.log_softmax(
            model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float(), -1
        )
        for row, (context, whole) in enumerate(zip(contexts, wholes)):
            targets = torch.tensor(whole[len(context) :], device=logprobs.device)
            positions = torch.arange(len(context) - 1, len(whole) - 1, device=logprobs.device)
            results.append(logprobs[row, positions, targets].sum().item())
    return results


def multiple_choice_accuracy(model, tokenizer, prompts: list[str], docs: list[dict]) -> tuple[float, list[bool]]:
    """Fraction of GPQA-style docs whose most likely choice after its rendered prompt is the correct one (lm-eval's
    ``acc``)."""
    pairs = [(prompt, choice) for prompt, d in zip(prompts, docs) for choice in d["choices"]]
    scores = continuation_logprobs(model, tokenizer, pairs)
    correct = []
    for i, d in enumerate(docs):
        options = scores[4 * i : 4 * i + 4]
        correct.append(max(range(4), key=options.__getitem__) == d["answer"])
    return sum(correct) / len(correct), correct
