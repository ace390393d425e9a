"""Plots of benchmark results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def plot_rate_distortion(result: dict, path: Path) -> None:
    """SQNR against bits per weight for every format, Gaussian and reference-model weights, with 6.02·R."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["formats"] if "skipped" not in r]
    fig, ax = plt.subplots(figsize=(9, 6))
    bits = [r["bits_per_weight"] for r in rows]
    top = max(bits) + 0.5
    ax.plot([0, top], [0, 6.02 * top], "k--", lw=1, label="Gaussian bound 6.02·R dB")
    ax.scatter(bits, [r["sqnr_gaussian_db"] for r in rows], marker="o", label=f"Gaussian weights {tuple(result['gaussian'])}")
    ax.scatter([r["model_bits_per_weight"] for r in rows], [r["sqnr_model_db"] for r in rows], marker="x",
               label=f"tiny-gpt-oss weights (n={result['model_values']:,})")
    for r in rows:
        ax.annotate(r["format"].replace("(", "\n("), (r["bits_per_weight"], r["sqnr_gaussian_db"]), fontsize=6,
                    xytext=(3, -3), textcoords="offset points")
    ax.set_xlabel("stored bits per weight")
    ax.set_ylabel("SQNR (dB)")
    ax.set_xlim(1.5, min(top, 17))
    ax.set_ylim(0, 6.02 * min(top, 17))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title("Rate-distortion of quantlab's formats (quantlab bench formats --quality)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
