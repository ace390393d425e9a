"""Where a measurement goes: ``artifacts/<variant>/measure/`` holds measure.json, experts.csv, layers.csv and
two PNGs (per-expert heatmaps of isolated output error and of routed tokens, and router agreement per layer)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from quantlab.store import atomic_directory
from quantlab.store.records import Measurement


def expert_weight_errors(manifest: dict) -> dict[tuple[int, int], dict[str, dict]]:
    """(layer, expert) -> {matrix name: error summary} from a variant's manifest."""
    errors: dict[tuple[int, int], dict[str, dict]] = {}
    for row in manifest.get("tensors", []):
        if row.get("format") != "keep" and row.get("component") == "experts" and row.get("expert") is not None:
            errors.setdefault((row["layer"], row["expert"]), {})[row["name"]] = row["error"]
    return errors


def write_measurement(record: Measurement, folder: Path) -> None:
    with atomic_directory(folder, force=True) as tmp:
        (tmp / "measure.json").write_text(record.to_json(indent=2))
        result = record.to_dict()
        with open(tmp / "experts.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                [
                    "layer",
                    "expert",
                    "tokens_baseline",
                    "tokens_variant",
                    "isolated_relative_error",
                    "worst_matrix_relative_error",
                ]
            )
            for layer in result["layers"]:
                for e in layer["experts"]:
                    worst = max((m["relative_error"] for m in e.get("weight_error", {}).values()), default="")
                    writer.writerow(
                        [
                            layer["layer"],
                            e["expert"],
                            e["tokens_baseline"],
                            e["tokens_variant"],
                            e["isolated_relative_error"],
                            worst,
                        ]
                    )
        with open(tmp / "layers.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                [
                    "layer",
                    "jaccard_mean",
                    "exact_set_rate",
                    "top1_flip_rate",
                    "load_kl",
                    "hidden_cosine_mean",
                    "hidden_relative_error",
                ]
            )
            for layer in result["layers"]:
                r, h = layer["router"], layer["hidden_state"]
                writer.writerow(
                    [
                        layer["layer"],
                        r["jaccard_mean"],
                        r["exact_set_rate"],
                        r["top1_flip_rate"],
                        r["load_kl"],
                        h["cosine_mean"],
                        h["relative_error"],
                    ]
                )
        _plots(result, tmp)


def _plots(result: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = result["layers"]
    if not layers:
        return
    isolated = np.array(
        [
            [np.nan if e["isolated_relative_error"] is None else e["isolated_relative_error"] for e in layer["experts"]]
            for layer in layers
        ]
    )
    routed = np.array([[e["tokens_baseline"] for e in layer["experts"]] for layer in layers])
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * len(layers) + 2.2))
    for ax, data, title, fmt in (
        (axes[0], isolated, "isolated output error (relative)", "{:.3f}"),
        (axes[1], routed, "tokens routed (baseline)", "{:d}"),
    ):
        image = ax.imshow(data, aspect="auto", cmap="viridis")
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.set_yticks(range(len(layers)), [str(layer["layer"]) for layer in layers])
        ax.set_title(title)
        for (i, j), value in np.ndenumerate(data):
            if not (isinstance(value, float) and np.isnan(value)):
                ax.text(
                    j,
                    i,
                    fmt.format(int(value) if fmt == "{:d}" else value),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white",
                )
        fig.colorbar(image, ax=ax)
    fig.suptitle(
        f"{result['variant']} vs {result['baseline']}: {result['tokens']:,} tokens of {result['text']}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(folder / "experts_heatmap.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [layer["layer"] for layer in layers]
    ax.plot(x, [layer["router"]["jaccard_mean"] for layer in layers], "o-", label="top-k Jaccard (mean)")
    ax.plot(x, [layer["router"]["exact_set_rate"] for layer in layers], "s-", label="exact top-k set rate")
    ax.plot(x, [1 - layer["router"]["top1_flip_rate"] for layer in layers], "^-", label="top-1 kept rate")
    ax.set_xlabel("layer")
    ax.set_ylabel("agreement with baseline")
    ax.set_xticks(x)
    ax.set_title(f"router agreement, n = {layers[0]['router']['tokens']:,} tokens per layer", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "router_agreement.png", dpi=110)
    plt.close(fig)
