"""Plots of benchmark results (matplotlib, headless)."""

from __future__ import annotations

import re
from pathlib import Path

_SHORT = (
    (r"gguf:", ""),
    (r"granularity=", ""),
    (r"scale_rule=floor", ""),
    (r"group_size=", "g"),
    (r"symmetric=True", "sym"),
    (r"symmetric=False", "asym"),
    (r"block_size=", "b"),
    (r", ", ","),
    (r"\(\)", ""),
)


def short_label(name: str) -> str:
    """A compact plot label: ``int4(group_size=32, symmetric=False)`` -> ``int4(g32,asym)``."""
    for pattern, replacement in _SHORT:
        name = re.sub(pattern, replacement, name)
    return name


def plot_rate_distortion(result: dict, path: Path) -> None:
    """SQNR against bits per weight for every format, Gaussian and reference-model weights, with 6.02·R."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # 16-bit casts sit far off to the right (and bf16 is exact on bf16 weights): the table has them.
    rows = [r for r in result["formats"] if "skipped" not in r and r["bits_per_weight"] < 12]
    fig, ax = plt.subplots(figsize=(11, 7))
    bits = [r["bits_per_weight"] for r in rows]
    top = max(bits) + 0.5
    ax.plot([0, top], [0, 6.02 * top], "k--", lw=1, label="Gaussian bound 6.02·R dB")
    ax.scatter(
        bits, [r["sqnr_gaussian_db"] for r in rows], marker="o", label=f"Gaussian weights {tuple(result['gaussian'])}"
    )
    ax.scatter(
        [r["model_bits_per_weight"] for r in rows],
        [r["sqnr_model_db"] for r in rows],
        marker="x",
        label=f"tiny-gpt-oss weights (n={result['model_values']:,})",
    )
    for i, r in enumerate(sorted(rows, key=lambda r: (r["bits_per_weight"], r["sqnr_gaussian_db"]))):
        ax.annotate(
            short_label(r["format"]),
            (r["bits_per_weight"], r["sqnr_gaussian_db"]),
            fontsize=7,
            xytext=(6, -10 + 9 * (i % 3)),
            textcoords="offset points",
        )
    ax.set_xlabel("stored bits per weight")
    ax.set_ylabel("SQNR (dB)")
    ax.set_xlim(2, top)
    ax.set_ylim(0, 6.02 * top)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title("Rate-distortion of quantlab's formats (quantlab bench formats --quality)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
