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
