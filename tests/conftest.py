import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # every test runs without a model hub
REPO = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=None):
    """Runs the real ``quantlab`` entry point in a subprocess and returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "quantlab", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env={**os.environ, "COLUMNS": "200"},
        timeout=600,
    )


@pytest.fixture
def cli():
    return run_cli


ATTRIBUTED_LIMIT = 24
ATTRIBUTED_RECIPE = """\
name: two-choices
model: zoo:tiny-gpt-oss
groups:
  - name: experts
    select: {component: experts}
    format: {name: int3, group_size: 32, symmetric: true}
    method: {name: lowrank, rank_ratio: 0.25}
serve:
  reasoning_effort: high
  effort_honored: false
"""


@pytest.fixture(scope="session")
def attributed_store(tmp_path_factory):
    """A store with one attribution (three factors, 24 items): shared by the attribution and report tests."""
    from quantlab.stages.attribute import attribute

    root = tmp_path_factory.mktemp("attribute")
    path = root / "two-choices.yaml"
    path.write_text(ATTRIBUTED_RECIPE)
    store = root / "artifacts"
    result = attribute(path, ["zoo_aime_style"], limit=ATTRIBUTED_LIMIT, tokens=1024, artifacts=store)
    return result, store


def shipped_vocab_size() -> int:
    from quantlab.zoo import SHIPPED_CHECKPOINT

    return int(json.loads((SHIPPED_CHECKPOINT / "config.json").read_text())["vocab_size"])


def small_family_config(family: str) -> dict:
    """The family's released config at toy widths: what changes is sizes, never names or layout."""
    from quantlab.stages.synthetic import synth_config

    config = synth_config(family, layers=2, experts=8 if family.startswith(("qwen3", "olmoe")) else 4)
    heads = 4
    config |= {"hidden_size": 64, "num_attention_heads": heads, "vocab_size": shipped_vocab_size()}
    config["num_key_value_heads"] = heads if config["model_type"] == "olmoe" else 2
    config["intermediate_size"] = 64 if config["model_type"] == "gpt_oss" else 96
    if "head_dim" in config:
        config["head_dim"] = 16
    if "moe_intermediate_size" in config:
        config["moe_intermediate_size"] = 32
    return config


def shipped_model_calls_tools() -> bool:
    """Whether the shipped checkpoint's vocabulary has <|call|> (one trained on the calculator tool)."""
    from quantlab.zoo import SHIPPED_CHECKPOINT

    return "<|call|>" in (SHIPPED_CHECKPOINT / "tokenizer.json").read_text()
