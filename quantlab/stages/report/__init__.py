"""``quantlab report``: one self-contained HTML file and a markdown twin, from the store only.

``collect`` reads what build / measure / eval / attribute stored, ``charts`` draws it, ``render`` lays it out.
"""

from __future__ import annotations

from pathlib import Path

from quantlab.errors import UserError
from quantlab.stages.report.collect import collect
from quantlab.stages.report.render import build_report, write


def write_report(
    artifacts,
    out: Path,
    variants: list[str] | None = None,
    baseline: str | None = "bf16",
    command: str = "quantlab report",
) -> dict[str, Path]:
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / "report.html").is_file():
        raise UserError(f"--out {out}: a non-empty folder that holds no earlier report; choose an empty or new folder")
    store = collect(artifacts, variants, baseline)
    return write(build_report(store, command), out)
