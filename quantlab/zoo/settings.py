"""Training settings of the reference model (kept free of heavy imports: the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass

# The documented training budget: the shipped checkpoint was trained with it on 2 CPU cores.
DEFAULT_MINUTES = 60.0


@dataclass
class TrainSettings:
    seed: int = 0
    steps: int | None = None  # fixed step count: reproducible bytes
    minutes: float | None = None  # time budget: the step count is fixed after warm-up and recorded
    batch_size: int = 8  # packed rows per optimizer step
    row_tokens: int = 256  # tokens per packed row (the model's context)
    learning_rate: float = 1.5e-3
    min_learning_rate_ratio: float = 0.05
    warmup_steps: int = 300
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    low_effort_fraction: float = 0.2  # share of training conversations at low effort
    medium_effort_fraction: float = 0.3  # at medium; high takes the rest
    # share of training conversations that call the calculator tool: about 5% of the tokens, as they are longer
    tool_fraction: float = 0.02
    eval_every: int = 500
    eval_problems: int = 200
    save_dtype: str = "bfloat16"

    def command(self, steps: int) -> str:
        """The ``quantlab zoo train`` command that reproduces a run of ``steps`` steps byte for byte."""
        return (
            f"quantlab zoo train --seed {self.seed} --steps {steps} --batch-size {self.batch_size} "
            f"--learning-rate {self.learning_rate:g} --warmup-steps {self.warmup_steps} "
            f"--row-tokens {self.row_tokens} --low-effort-fraction {self.low_effort_fraction:g} "
            f"--medium-effort-fraction {self.medium_effort_fraction:g} --tool-fraction {self.tool_fraction:g}"
        )
