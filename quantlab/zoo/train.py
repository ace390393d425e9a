"""Training loop of the reference model: nanoGPT-sized, deterministic on CPU for a given seed and step count."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import GptOssForCausalLM

from quantlab.store import atomic_directory
from quantlab.zoo import tasks
from quantlab.zoo.model import MODEL_NAME, tiny_gpt_oss_config
from quantlab.zoo.score import exact_match
from quantlab.zoo.scoring import record_scores, score_reference_tasks
from quantlab.zoo.settings import TrainSettings
from quantlab.zoo.tokenizer import save_tokenizer, train_tokenizer

TOKENIZER_TRAINING_TEXTS = 20_000


@dataclass
class TrainResult:
    steps: int
    wall_time_s: float
    tokens: int
    tokens_per_s: float
    final_train_loss: float
    final_validation_loss: float
    training_data_sha256: str
    history: list = field(default_factory=list)


def _learning_rate(step: int, total: int, s: TrainSettings) -> float:
    if step < s.warmup_steps:
        return s.learning_rate * (step + 1) / s.warmup_steps
    progress = min(1.0, (step - s.warmup_steps) / max(1, total - s.warmup_steps))
    floor = s.learning_rate * s.min_learning_rate_ratio
    return floor + 0.5 * (s.learning_rate - floor) * (1 + math.cos(math.pi * progress))


def _packed_batches(tokenizer, settings: TrainSettings, data_hash):
    """Batches of packed rows, as real models are trained: conversations follow one another in a row (the format
    separates them: each ends with <|return|>, the next opens with <|start|>system), every row starts with a whole
    conversation, the last one is cut at the row's end, and every token is a target. Rows are (batch, row_tokens)."""
    stream = tasks.training_conversations(
        settings.seed,
        tasks.effort_mix(settings.low_effort_fraction, settings.medium_effort_fraction),
        settings.tool_fraction,
    )
    while True:
        rows = []
        for _ in range(settings.batch_size):
            row: list[int] = []
            while len(row) < settings.row_tokens:
                text = next(stream)
                data_hash.update(text.encode() + b"\n")
                row += tokenizer(text)["input_ids"]
            rows.append(row[: settings.row_tokens])
        ids = torch.tensor(rows)
        yield ids, torch.ones_like(ids), ids.clone()


def _validation_prompts(count: int) -> tuple[list[str], list[int]]:
    """Prompts at high effort and their answers: the validation problems the training log scores."""
    problems = tasks.problems("validation", count)
    return [tasks.prompt_text(p, "high") for p in problems], [p.answer for p in problems]


@torch.no_grad()
def _validation_loss(model, tokenizer, count: int = 256) -> float:
    """Mean token loss over single validation conversations, a third at each effort."""
    problems = tasks.problems("validation", count)
    texts = [tasks.conversation_text(p, tasks.EFFORTS[i % 3]) for i, p in enumerate(problems)]
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    tokenizer.padding_side = "left"
    return model(**batch, labels=labels).loss.item()


def train(
    out_dir: Path,
    settings: TrainSettings,
    log: Callable[[str], None] = print,
    force: bool = False,
    score_items: int = 0,
) -> TrainResult:
    """Trains ``tiny-gpt-oss`` from scratch and writes the checkpoint (model, tokenizer, manifest) to ``out_dir``.

    With ``score_items`` > 0 the saved weights (after rounding to ``save_dtype``) are scored on that many test
    items per task and the scores are written beside them.
    """
    if (settings.steps is None) == (settings.minutes is None):
        raise ValueError("give exactly one of steps or minutes")
    torch.manual_seed(settings.seed)
    mix = tasks.effort_mix(settings.low_effort_fraction, settings.medium_effort_fraction)
    tokenizer = train_tokenizer(
        itertools.islice(
            tasks.training_conversations(settings.seed, mix, settings.tool_fraction), TOKENIZER_TRAINING_TEXTS
        ),
        tasks.chat_template(),
    )
    config = tiny_gpt_oss_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    config.output_router_logits = True  # adds the load-balancing loss, so that all experts get used
    model = GptOssForCausalLM(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.learning_rate,
        betas=(0.9, 0.95),
    )
    data_hash = hashlib.sha256()
    batches = _packed_batches(tokenizer, settings, data_hash)

    total_steps = settings.steps
    tokens, history = 0, []
    recent_losses: list[float] = []
    start = time.perf_counter()
    eval_s = 0.0  # validation time, kept out of the throughput figure
    step = 0
    model.train()
    while total_steps is None or step < total_steps:
        if total_steps is None and step == settings.warmup_steps:
            assert settings.minutes is not None  # no --steps: the time budget fixes them
            # Fix the step count from the warm-up's pace so the schedule (and the bytes) are reproducible
            # with --steps from then on.
            per_step = (time.perf_counter() - start - eval_s) / step
            total_steps = max(step + 1, int(settings.minutes * 60 / per_step))
            log(f"time budget {settings.minutes} min -> {total_steps} steps ({per_step * 1000:.0f} ms/step)")
        lr = _learning_rate(step, total_steps or 10**9, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids, mask, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        recent_losses = (recent_losses + [loss.item()])[-100:]
        step += 1
        if step % settings.eval_every == 0 or step == total_steps:
            eval_start = time.perf_counter()
            model.eval()
            accuracy, _ = exact_match(model, tokenizer, *_validation_prompts(settings.eval_problems))
            model.train()
            eval_s += time.perf_counter() - eval_start
            elapsed = time.perf_counter() - start
            entry = {
                "step": step,
                "elapsed_s": round(elapsed, 1),
                "train_loss": round(sum(recent_losses) / len(recent_losses), 4),
                "lr": lr,
                "validation_exact_match": accuracy,
                "tokens_per_s": round(tokens / (elapsed - eval_s)),
            }
            history.append(entry)
            log(json.dumps(entry))
    wall = time.perf_counter() - start

    model.eval()
    model.config.output_router_logits = False
    # Round to the shipped precision now, so that everything reported below describes the saved weights.
    model.to(getattr(torch, settings.save_dtype)).float()
    result = TrainResult(
        steps=step,
        wall_time_s=round(wall, 1),
        tokens=tokens,
        tokens_per_s=round(tokens / (wall - eval_s)),
        final_train_loss=round(sum(recent_losses) / len(recent_losses), 4),
        final_validation_loss=round(_validation_loss(model, tokenizer), 4),
        training_data_sha256=data_hash.hexdigest(),
        history=history,
    )
    manifest = {
        "model": MODEL_NAME,
        "command": settings.command(step),
        "settings": asdict(settings),
        "result": asdict(result),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
    }
    scores = score_reference_tasks(model, tokenizer, count=score_items) if score_items > 0 else None
    with atomic_directory(out_dir, force=force) as tmp:
        model.to(getattr(torch, settings.save_dtype)).save_pretrained(tmp)
        # A turn ends at <|return|> (an answer) or <|call|> (a tool call), as gpt-oss's generation config says.
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|call|>")]
        model.generation_config.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        (tmp / "training_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if scores is not None:
            record_scores(tmp, scores)
    return result
