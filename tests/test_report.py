"""quantlab report: self-contained HTML + markdown twin from the store only, identical on re-runs, numbers equal
to the stored results, and rendered by a real headless browser (Debian's chromium) with its charts visible."""

import base64
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ATTRIBUTED_LIMIT

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def store(attributed_store):
    """The attribution store plus two variants built, measured and evaluated on the same items."""
    from quantlab.stages.build import build
    from quantlab.stages.evaluate.run import evaluate
    from quantlab.stages.measure.run import measure_variant

    _, artifacts = attributed_store
    for name in ("bf16", "int4-rtn"):
        build(REPO / "recipes" / f"{name}.yaml", artifacts)
        measure_variant(name, None, "zoo:aime-style:test:high", 1024, artifacts)
        evaluate(name, "zoo_aime_style", limit=ATTRIBUTED_LIMIT, artifacts=artifacts)
    return artifacts


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    from quantlab.stages.report import write_report

    out = tmp_path_factory.mktemp("report") / "report"
    write_report(store, out)
    return out


def test_report_is_self_contained_and_has_its_markdown_twin(report):
    html = (report / "report.html").read_text()
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # nothing loaded from outside the file
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    figures = sorted((report / "figures").glob("*.png"))
    assert len(images) == len(figures) >= 5  # accuracy, drift, waterfall, heatmaps, router agreement
    assert sorted(base64.b64decode(i) for i in images) == sorted(f.read_bytes() for f in figures)
    markdown = (report / "report.md").read_text()
    for figure in figures:
        assert f"(figures/{figure.name})" in markdown
    for section in (
        "Task accuracy per variant",
        "Does perplexity predict the loss?",
        "Attribution",
        "Experts and routing",
        "Reproducibility",
    ):
        assert section in html and section in markdown


def test_report_numbers_are_the_stored_ones(report, store):
    markdown = (report / "report.md").read_text()
    for name in ("bf16", "int4-rtn"):
        stored = json.loads(next((store / name / "eval").glob("zoo_aime_style-*.json")).read_text())
        correct = np.array(stored["correct"], dtype=float)
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |") and "x 1" in line)
        assert f"{100 * correct.mean():.1f}%" in row  # the score from the per-item record, recomputed here
        assert f"[{100 * stored['ci95'][0]:.1f}, {100 * stored['ci95'][1]:.1f}]" in row
    attribution = json.loads(next((store / "attribution" / "two-choices").glob("attribution-*.json")).read_text())
    total = attribution["tasks"]["zoo_aime_style"]["loss_points"]["value"]
    assert f"| total loss | {total:+.1f} |" in markdown
    manifest = json.loads((store / "int4-rtn" / "manifest.json").read_text())
    assert manifest["cache_key"][:16] in markdown and manifest["model"]["sha256"][:16] in markdown
    from importlib import metadata

    assert f"lm-eval {metadata.version('lm_eval')}" in markdown


def test_every_figure_names_the_command_that_regenerates_it(report):
    markdown = (report / "report.md").read_text()
    blocks = markdown.split("![")[1:]
    assert blocks
    for block in blocks:
        assert "```\nquantlab " in block.split("\n## ")[0]
    assert "quantlab eval bf16 int4-rtn --tasks zoo_aime_style --limit 24 --baseline bf16" in markdown
    assert (
        "quantlab attribute" in markdown
        and "quantlab measure bf16 int4-rtn --text zoo:aime-style:test:high --tokens 1024" in markdown
    )


def test_a_second_report_on_the_same_store_is_identical(report, store, tmp_path):
    from quantlab.stages.report import write_report

    again = tmp_path / "again"
    write_report(store, again)
    assert _files(again) == _files(report)
    write_report(store, report)  # over the earlier report: replaced as a whole, same bytes
    assert _files(report) == _files(again)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_a_headless_browser_renders_the_charts(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1100,2400",
            f"--screenshot={shot}",
            (report / "report.html").resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    # the accuracy bars' colour (#1f77b4), drawn only inside the embedded PNG charts
    bar = (np.abs(pixels - np.array([0x1F, 0x77, 0xB4])).sum(axis=1) <= 12).sum()
    assert bar > 2000, f"only {bar} bar-coloured pixels: the charts did not render"
    assert len(np.unique(pixels, axis=0)) > 50  # text, tables and charts, not a blank page
