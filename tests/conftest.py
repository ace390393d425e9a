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
