"""quantlab sweep: a grid of one recipe's settings, each point a recipe of its own, built, measured, evaluated;
as Ray tasks the stored sweep is the sequential one's."""

import json

import pytest

from quantlab.errors import UserError
from quantlab.recipe import load_recipe
from quantlab.stages.sweep import sweep

GRID = ["groups.0.format.group_size=32,128"]


def test_a_grid_of_group_sizes(tmp_path):
    result = sweep(["int4-rtn"], GRID, ["zoo_gpqa_style"], limit=8, tokens=256, artifacts=tmp_path / "a")
    points = result.points
    assert [p["settings"] for p in points] == [
        {"groups.0.format.group_size": 32},
        {"groups.0.format.group_size": 128},
    ]
    for point, size in zip(points, (32, 128)):
        recipe = load_recipe(point["recipe"])  # each point is a recipe file of its own
        assert recipe.groups[0].format.params["group_size"] == size
        manifest = json.loads((tmp_path / "a" / point["variant"] / "manifest.json").read_text())
        assert manifest["recipe"]["groups"][0]["format"]["params"]["group_size"] == size
        assert point["tasks"]["zoo_gpqa_style"]["items"] == 8 and point["kld_n"] > 0
    # smaller groups cost more bits: (4 bits + a 16-bit scale per group) per weight
    assert points[0]["bits_per_weight"] > points[1]["bits_per_weight"]


def test_the_sweep_as_ray_tasks_is_the_sequential_one(tmp_path):
    pytest.importorskip("ray", reason="--ray needs quantlab[ray]")
    runs = {}
    for mode in ("sequential", "ray"):
        store = tmp_path / mode
        result = sweep(
            ["int4-rtn"],
            GRID,
            ["zoo_gpqa_style"],
            limit=8,
            tokens=256,
            artifacts=store,
            ray="local" if mode == "ray" else None,
            workers=2 if mode == "ray" else None,
        )
        runs[mode] = result.stored_at.read_text().replace(str(store), "STORE")
    assert runs["ray"] == runs["sequential"]


def test_a_setting_that_does_not_fit_the_recipe_is_one_line(tmp_path):
    with pytest.raises(UserError, match="--set groups.5.format: groups has no item 5"):
        sweep(["int4-rtn"], ["groups.5.format=mxfp4"], ["zoo_gpqa_style"], artifacts=tmp_path)
    with pytest.raises(UserError, match="give PATH=V1,V2"):
        sweep(["int4-rtn"], ["groups.0.format.group_size"], ["zoo_gpqa_style"], artifacts=tmp_path)
    with pytest.raises(UserError, match=r"int4-rtn\.0\.yaml"):  # a value the recipe refuses: its own error, its file
        sweep(["int4-rtn"], ["groups.0.format.group_size=-3"], ["zoo_gpqa_style"], artifacts=tmp_path)


def test_evaluation_repeats_as_ray_tasks_are_the_sequential_repeats(tmp_path):
    """Sampled repeats, each a function of its seed: run as Ray tasks, the stored evaluation is the sequential one's
    (but for its wall time)."""
    pytest.importorskip("ray", reason="--ray needs quantlab[ray]")
    from quantlab.stages.evaluate.run import evaluate

    records = {}
    for mode in ("sequential", "ray"):
        options = {"ray": "local", "workers": 2} if mode == "ray" else {}
        result = evaluate(
            "zoo:tiny-gpt-oss",
            "zoo_aime_style",
            limit=6,
            repeats=3,
            temperature=1.0,
            artifacts=tmp_path / mode,
            generation={"max_gen_toks": 48},
            **options,
        )
        assert result.repeats == 3 and not result.cache_hit
        records[mode] = {k: v for k, v in result.to_dict().items() if k != "seconds"}
    assert records["ray"] == records["sequential"]
    assert records["ray"]["seeds"] == [0, 1, 2]
    samples = [[s["generated"] for s in run["samples"]] for run in records["ray"]["lm_eval"]]
    assert samples[0] != samples[1]  # temperature 1: the repeats really sample, differently per seed


def test_a_ray_evaluation_stores_exactly_the_sequential_runs_settings(tmp_path):
    """A length the model cannot hold is clamped by the run, and the run says so in the stored settings. Before
    the settings were a frozen record, the run wrote the clamp into its own copy of them: a Ray worker's copy, so
    the Ray evaluation stored settings without it while the sequential one stored them with it."""
    pytest.importorskip("ray", reason="--ray needs quantlab[ray]")
    from quantlab.stages.evaluate.run import evaluate

    records = {}
    for mode in ("sequential", "ray"):
        options = {"ray": "local", "workers": 2} if mode == "ray" else {}
        records[mode] = evaluate(
            "zoo:tiny-gpt-oss",
            "zoo_aime_style",
            limit=2,
            repeats=2,
            temperature=1.0,
            artifacts=tmp_path / mode,
            generation={"max_gen_toks": 4096},  # more than the embedded model's 256 positions
            **options,
        )
    assert records["ray"].settings == records["sequential"].settings
    assert records["ray"].settings_hash == records["sequential"].settings_hash
    # the clamp itself, by hand: half of the model's 256-position context
    assert records["ray"].settings["max_gen_toks_clamped"] == {"requested": 4096, "used": 128, "context": 256}
