"""The report's figures, drawn with matplotlib from stored results; each returns PNG bytes.

PNGs are written without a software/date stamp, so the same store draws the same bytes.
"""

from __future__ import annotations

import io

import numpy as np

from quantlab.stages.report.collect import Comparison, Variant

BAR = "#1f77b4"  # one colour for accuracy bars (the report's browser test looks for it)
REFERENCE = "#7f7f7f"


def _figure(width: float, height: float, rows: int = 1, columns: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt.subplots(rows, columns, figsize=(width, height), dpi=100, squeeze=rows * columns == 1)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def accuracy_bars(comparison: Comparison, baseline: str | None) -> bytes:
    """Task accuracy per variant with its 95% interval: the provider-comparison chart, for variants."""
    names = list(comparison.results)
    scores = np.array([100 * comparison.results[n].score for n in names])
    low = np.array([100 * comparison.results[n].ci95[0] for n in names])
    high = np.array([100 * comparison.results[n].ci95[1] for n in names])
    fig, ax = _figure(7, 0.45 * len(names) + 1.2)
    y = np.arange(len(names))[::-1]
    ax.barh(y, scores, color=BAR, height=0.6)
    ax.errorbar(scores, y, xerr=[scores - low, high - scores], fmt="none", ecolor="black", capsize=3, lw=1)
    for yi, s, h in zip(y, scores, high):
        ax.text(h + 1, yi, f"{s:.1f}%", va="center", fontsize=8)
    if baseline in comparison.results:
        ax.axvline(100 * comparison.results[baseline].score, color=REFERENCE, ls="--", lw=1)
    ax.set_yticks(y, names)
    ax.set_xlim(0, 110)
    ax.set_xlabel(
        f"{comparison.task} accuracy, % (95% bootstrap CI; {comparison.items} items x {comparison.repeats}, {comparison.decoding()})"
    )
    return _png(fig)


def drift_vs_accuracy(variants: list[Variant], comparison: Comparison, baseline: str) -> bytes:
    """Does perplexity predict the loss? Accuracy loss against the perplexity ratio and against mean KLD."""
    fig, axes = _figure(9, 3.4, 1, 2)
    axes = axes[0]
    base = 100 * comparison.results[baseline].score
    points = [
        (v, v.measurement["logits"]["response_tokens"])
        for v in variants
        if v.measure and v.name in comparison.results and v.measurement["logits"]["response_tokens"].get("n")
    ]
    for ax, key, label in (
        (axes[0], "perplexity_ratio", "perplexity ratio (response tokens, teacher-forced)"),
        (axes[1], "kl_divergence", "mean KL(baseline ‖ variant), response tokens"),
    ):
        for n, (v, logits) in enumerate(points):
            x = logits[key] if key == "perplexity_ratio" else max(logits[key]["mean"], 1e-7)
            r = comparison.results[v.name]
            loss = base - 100 * r.score
            err = [[100 * (r.ci95[1] - r.score)], [100 * (r.score - r.ci95[0])]]
            ax.errorbar([x], [loss], yerr=err, fmt="o", color=BAR, ecolor="black", capsize=2, ms=4, lw=1)
            # staggered labels: variants that barely differ sit on top of each other
            ax.annotate(v.name, (x, loss), fontsize=7, xytext=(4, 3 + 9 * (n % 4)), textcoords="offset points")
        ax.axhline(0, color=REFERENCE, lw=0.8)
        ax.set_xlabel(label)
        if key == "kl_divergence":
            ax.set_xscale("log")
    axes[0].axvline(1.0, color=REFERENCE, lw=0.8, ls=":")
    axes[0].set_ylabel(f"{comparison.task} loss vs {baseline}, points")
    fig.tight_layout()
    return _png(fig)


def expert_heatmaps(variants: list[Variant]) -> bytes:
    """Isolated output error of every expert (layer x expert), one panel per measured variant."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    measured = [v for v in variants if v.measure]
    grids = []
    for v in measured:
        grids.append(
            np.array(
                [
                    [
                        np.nan if e["isolated_relative_error"] is None else e["isolated_relative_error"]
                        for e in layer["experts"]
                    ]
                    for layer in v.measurement["layers"]
                ],
                dtype=float,
            )
        )
    positive = np.concatenate([g[np.isfinite(g) & (g > 0)] for g in grids]) if grids else np.array([])
    norm = LogNorm(vmin=max(positive.min(), 1e-5), vmax=positive.max()) if positive.size else None
    columns = min(4, len(measured))
    rows = -(-len(measured) // columns)
    fig, axes = _figure(2.6 * columns + 1, 1.9 * rows + 0.4, rows, columns)
    axes = np.atleast_1d(axes)  # one measured variant: a single panel, still iterated as a grid
    image = None
    for ax, v, grid in zip(axes.flat, measured, grids):
        cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")  # grey: an expert that received no token
        image = ax.imshow(np.where(grid > 0, grid, np.nan), aspect="auto", cmap=cmap, norm=norm)
        ax.set_title(v.name, fontsize=8)
        ax.set_xlabel("expert", fontsize=7)
        ax.set_ylabel("layer", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_yticks(range(grid.shape[0]))
        ax.set_xticks(range(0, grid.shape[1], max(1, grid.shape[1] // 8)))
    for ax in list(axes.flat)[len(measured) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="isolated relative error (grey: no tokens)")
    return _png(fig)


def router_agreement(variants: list[Variant]) -> bytes:
    """Per layer: top-1 routing flips and the Jaccard overlap of the routed expert sets, per variant."""
    fig, axes = _figure(9, 3.2, 1, 2)
    axes = axes[0]
    for v in (v for v in variants if v.measure):
        layers = [layer["layer"] for layer in v.measurement["layers"]]
        axes[0].plot(
            layers,
            [100 * layer["router"]["top1_flip_rate"] for layer in v.measurement["layers"]],
            marker="o",
            ms=3,
            label=v.name,
        )
        axes[1].plot(
            layers,
            [layer["router"]["jaccard_mean"] for layer in v.measurement["layers"]],
            marker="o",
            ms=3,
            label=v.name,
        )
    axes[0].set_ylabel("top-1 expert changed, % of tokens")
    axes[1].set_ylabel("Jaccard overlap of routed sets")
    for ax in axes:
        ax.set_xlabel("layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].legend(fontsize=7, frameon=False, loc="lower left")
    fig.tight_layout()
    return _png(fig)


def waterfall(task_result: dict, labels: dict[str, str]) -> bytes:
    """From the baseline's accuracy down to the full recipe's: one step per factor (its Shapley share, with its
    95% interval)."""
    shares = dict(task_result["shares_points"])
    if task_result.get("efficiency_gap") is None:  # designs whose effects do not add up: the rest is interaction
        shares["interaction"] = task_result["interaction_points"]
        labels = labels | {"interaction": "interaction"}
    start = 100 * task_result["baseline"]["score"]
    fig, ax = _figure(7.5, 0.5 * len(shares) + 1.6)
    names = ["baseline"] + [labels[k] for k in shares] + ["full recipe"]
    level, y = start, np.arange(len(names))[::-1]
    ax.barh(y[0], start, color=REFERENCE, height=0.6)
    for i, share in enumerate(shares.values(), start=1):
        value = share["value"]
        ax.barh(y[i], -value, left=level, color="#d62728" if value > 0 else "#2ca02c", height=0.6)
        ax.errorbar(
            [level - value],
            [y[i]],
            xerr=[[share["ci95"][1] - value], [value - share["ci95"][0]]],
            fmt="none",
            ecolor="black",
            capsize=3,
            lw=1,
        )
        ax.text(
            max(level, level - value) + 1,
            y[i],
            f"{-value:+.1f} [{-share['ci95'][1]:+.1f}, {-share['ci95'][0]:+.1f}]",
            va="center",
            fontsize=7,
        )
        level -= value
    full = 100 * task_result["full"]["score"]
    ax.barh(y[-1], full, color=BAR, height=0.6)
    ax.set_yticks(y, [n if len(n) < 48 else n[:45] + "..." for n in names], fontsize=8)
    ax.set_xlim(0, 115)
    ax.set_xlabel(f"accuracy, % ({task_result['items']} items x {task_result['repeats']}; Shapley shares, 95% CI)")
    return _png(fig)
