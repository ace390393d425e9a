"""quantlab attribute end to end on the reference model: factors, cells, Shapley shares against a hand computation
from the stored cell evaluations, the serving factors against evaluations of their own, intervals, KL shares."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ATTRIBUTED_LIMIT as LIMIT
from conftest import ATTRIBUTED_RECIPE as RECIPE

from quantlab.recipe import load_recipe
from quantlab.stages.attribute import Factor, attribute, cell_recipe, recipe_factors
from quantlab.stages.evaluate.run import evaluate

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_written_as_yaml_loads_back_equal(path, tmp_path):
    recipe = load_recipe(path)
    copy = tmp_path / path.name
    copy.write_text(recipe.as_yaml())
    assert load_recipe(copy).resolved() == recipe.resolved()


def test_factors_and_cells_of_a_low_rank_group(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    recipe = load_recipe(path)
    factors = recipe_factors(recipe, runtime=False)
    assert [f.key for f in factors] == ["groups[0].method", "groups[0].format", "serve.effort_honored"]
    assert [f.kind for f in factors] == ["weights", "weights", "serving"]
    both = cell_recipe(recipe, frozenset({"groups[0].method", "groups[0].format"}), runtime=False)
    assert both.groups == recipe.groups and both.serve is None
    format_only = cell_recipe(recipe, frozenset({"groups[0].format"}), runtime=False).groups[0]
    assert (format_only.method.name, format_only.format.name) == ("rtn", "int3")
    rank_only = cell_recipe(recipe, frozenset({"groups[0].method"}), runtime=False).groups[0]
    assert (rank_only.method.name, rank_only.format.name) == ("lowrank", "keep")
    assert cell_recipe(recipe, frozenset({"serve.effort_honored"}), runtime=False) is None  # the baseline's weights


def test_a_data_driven_method_without_its_format_is_the_baseline():
    recipe = load_recipe(REPO / "recipes" / "int4-gptq.yaml")
    keys = [f.key for f in recipe_factors(recipe, runtime=False)]
    assert keys == ["groups[0].method", "groups[0].format"]
    assert cell_recipe(recipe, frozenset({"groups[0].method"}), runtime=False) is None
    assert cell_recipe(recipe, frozenset({"groups[0].format"}), runtime=False).groups[0].method.name == "rtn"


def test_a_gguf_recipe_has_the_preset_and_the_runtime_as_factors():
    recipe = load_recipe(REPO / "recipes" / "gguf-q4_k_m.yaml")
    factors = recipe_factors(recipe, runtime=True)
    assert factors[0] == Factor("preset", "llama.cpp preset gguf-q4_k_m", "weights")
    assert factors[-1].kind == "runtime"
    baseline_exported = cell_recipe(recipe, frozenset({"runtime"}), runtime=True)
    assert baseline_exported.preset is None and baseline_exported.groups[0].format.name == "keep"
    assert "gguf" in baseline_exported.exports


@pytest.fixture(scope="module")
def attributed(attributed_store):
    return attributed_store


def _correct(subject: str, store: Path, task="zoo_aime_style", **options) -> np.ndarray:
    return np.array(evaluate(subject, task, limit=LIMIT, artifacts=store, **options).correct, dtype=float).mean(axis=1)


def test_shapley_shares_equal_a_hand_computation_from_the_cells(attributed):
    """Exact Shapley for three factors, weights 1/3 (alone), 1/6 (with one other), 1/3 (last), computed from each
    cell's own stored evaluation, read back through quantlab eval's store."""
    result, store = attributed
    cells = store / "attribution" / "two-choices" / "cells" / "choices"
    rank, fmt, serve = "groups[0].method", "groups[0].format", "serve.effort_honored"
    folders = {
        frozenset(): "zoo:tiny-gpt-oss",
        frozenset({rank}): cells / "two-choices.1.0",
        frozenset({fmt}): cells / "two-choices.0.1",
        frozenset({rank, fmt}): cells / "two-choices.1.1",
    }
    accuracy = {}
    for weights, subject in folders.items():
        # every cell asks for high effort; with the serving factor the stack drops it (no effort reaches the template)
        accuracy[weights] = 100 * _correct(str(subject), store, reasoning_effort="high").mean()
        accuracy[weights | {serve}] = 100 * _correct(str(subject), store).mean()
    loss = {cell: accuracy[frozenset()] - value for cell, value in accuracy.items()}

    def shapley(factor):
        others = [f for f in (rank, fmt, serve) if f != factor]
        alone = loss[frozenset({factor})] - loss[frozenset()]
        last = loss[frozenset({rank, fmt, serve})] - loss[frozenset(others)]
        middle = sum(loss[frozenset({o, factor})] - loss[frozenset({o})] for o in others)
        return alone / 3 + middle / 6 + last / 3

    task = result.tasks["zoo_aime_style"]
    for factor in (rank, fmt, serve):
        assert task["shares_points"][factor]["value"] == pytest.approx(shapley(factor), abs=1e-9)
    assert task["loss_points"]["value"] == pytest.approx(loss[frozenset({rank, fmt, serve})], abs=1e-9)
    assert sum(s["value"] for s in task["shares_points"].values()) == pytest.approx(
        task["loss_points"]["value"], abs=1e-9
    )
    assert abs(task["efficiency_gap"]) < 1e-9
    assert task["items"] == LIMIT and task["method"] == "exact"


def test_the_dropped_effort_is_the_default_effort(attributed):
    """A stack that drops the requested effort: the serve-only cell answers item for item as the baseline asked
    for medium effort (the template's default), and worse than at the high effort that was asked."""
    result, store = attributed
    served = _correct("zoo:tiny-gpt-oss", store)
    medium = _correct("zoo:tiny-gpt-oss", store, reasoning_effort="medium")
    assert np.array_equal(served, medium)
    assert served.mean() < _correct("zoo:tiny-gpt-oss", store, reasoning_effort="high").mean()
    assert result.settings["reasoning_effort"] == "high"
    labels = {f.key: f.label for f in result.factors}
    assert labels["serve.effort_honored"] == "requested effort (high) not honored"


def test_serving_departures_and_their_evaluation_options(tmp_path):
    from quantlab.errors import UserError

    stale = load_recipe("mxfp4-stale-engine")
    wrong = load_recipe("mxfp4-wrong-template")
    assert [f.key for f in recipe_factors(stale, False)] == ["groups[0]", "serve.effort_honored"]
    assert [f.key for f in recipe_factors(wrong, False)] == ["groups[0]", "serve.chat_template"]
    assert stale.serve.evaluation_options(set()) == {"reasoning_effort": "high"}  # the request, faithfully served
    assert stale.serve.evaluation_options({"effort_honored"}) == {}  # dropped: the template's default
    assert wrong.serve.evaluation_options({"chat_template"}) == {
        "reasoning_effort": "high",
        "chat_template": "final-only",
    }
    for serve, message in (
        ("{effort_honored: false}", "needs the reasoning_effort"),
        ("{chat_template: chatmll}", "chat_template must be one of"),
    ):
        path = tmp_path / "bad.yaml"
        path.write_text(
            f"name: bad\nmodel: zoo:tiny-gpt-oss\ngroups:\n  - select: {{component: experts}}\n    format: mxfp4\nserve: {serve}\n"
        )
        with pytest.raises(UserError, match=message):
            load_recipe(path)


def test_intervals_contain_their_point_and_the_cells_are_recorded(attributed):
    result, store = attributed
    task = result.tasks["zoo_aime_style"]
    for entry in [*task["shares_points"].values(), task["loss_points"], task["interaction_points"]]:
        assert entry["ci95"][0] <= entry["value"] <= entry["ci95"][1]
    assert task["loss_points"]["ci95"][1] > task["loss_points"]["ci95"][0]  # items disagree: a real interval
    assert len(result.cells) == 8
    stored = json.loads(Path(str(result.stored_at)).read_text())
    assert Path(str(result.stored_at)).parent == store / "attribution" / "two-choices"
    assert stored["tasks"]["zoo_aime_style"]["shares_points"] == task["shares_points"]
    for yaml_file in (store / "attribution" / "two-choices" / "cells" / "choices").glob("*.yaml"):
        assert load_recipe(yaml_file).name == yaml_file.stem


def test_kl_shares_add_up_to_the_full_recipes_measured_kl(attributed):
    """The per-problem KL sums reproduce measure's own mean KLD of the full cell (computed from its token array)."""
    result, store = attributed
    kl = result.kl
    measured = json.loads(
        (
            store / "attribution" / "two-choices" / "cells" / "choices" / "two-choices.1.1" / "measure" / "measure.json"
        ).read_text()
    )
    assert kl["kld_mean"]["value"] == pytest.approx(
        measured["logits"]["response_tokens"]["kl_divergence"]["mean"], rel=1e-9
    )
    assert sum(s["value"] for s in kl["shares"].values()) == pytest.approx(kl["kld_mean"]["value"], rel=1e-9)
    assert set(kl["shares"]) == {"groups[0].method", "groups[0].format"}  # serving does not change the weights


def test_a_second_attribution_is_served_from_the_cache(attributed, tmp_path):
    result, store = attributed
    path = Path(result.recipe_file)
    again = attribute(path, ["zoo_aime_style"], limit=LIMIT, tokens=1024, artifacts=store)
    assert again.tasks == result.tasks and again.kl == result.kl and str(again.stored_at) == str(result.stored_at)


def test_the_runtime_share_is_llama_cpp_against_torch_on_the_same_gguf(tmp_path):
    """Preset x runtime: the runtime's Shapley share is the mean of llama.cpp-minus-torch on the baseline's own
    GGUF export and on the quantized GGUF, each evaluated here through quantlab eval's two backends."""
    from quantlab.formats import ggml

    if not ggml.available():
        pytest.skip("needs llama-cpp-python (the gguf extra)")
    store = tmp_path / "artifacts"
    recipe_path = REPO / "recipes" / "gguf-q4_k_m.yaml"
    result = attribute(recipe_path, ["zoo_aime_style"], limit=16, tokens=512, artifacts=store)
    assert [f.key for f in result.factors] == ["preset", "runtime"]
    cells = store / "attribution" / "gguf-q4_k_m" / "cells" / "choices"
    quantized, exported = str(cells / "gguf-q4_k_m.1"), str(cells / "gguf-q4_k_m.0")
    score = {}
    for name, subject in (("baseline", exported), ("preset", quantized)):
        score[name] = 100 * evaluate(subject, "zoo_aime_style", limit=16, artifacts=store).score
        score[name + "+runtime"] = (
            100 * evaluate(subject, "zoo_aime_style", limit=16, artifacts=store, backend="llama.cpp").score
        )
    runtime = ((score["baseline"] - score["baseline+runtime"]) + (score["preset"] - score["preset+runtime"])) / 2
    task = result.tasks["zoo_aime_style"]
    assert task["shares_points"]["runtime"]["value"] == pytest.approx(runtime, abs=1e-9)
    assert task["loss_points"]["value"] == pytest.approx(score["baseline"] - score["preset+runtime"], abs=1e-9)


def test_group_granularity_keeps_each_group_whole():
    recipe = load_recipe(REPO / "recipes" / "compactifai-like.yaml")
    assert [f.key for f in recipe_factors(recipe, False, "groups")] == ["groups[0]", "groups[1]"]
    assert len(recipe_factors(recipe, False, "choices")) == 4
    keys = {f.key for f in recipe_factors(recipe, False, "groups")}
    only_experts = cell_recipe(recipe, frozenset({"groups[0]"}), False, keys)
    assert only_experts.groups == recipe.groups[:1]


def test_the_serve_section_does_not_enter_the_build(tmp_path):
    from quantlab.stages.build import cache_key

    served = load_recipe(REPO / "recipes" / "mxfp4-stale-engine.yaml")
    plain = served.model_copy(update={"serve": None})
    assert served.serve.settings() == {"reasoning_effort": "high", "effort_honored": False}
    assert cache_key(served, "model", {"v": "1"}) == cache_key(plain, "model", {"v": "1"})


def test_all_granularity_splits_a_group_size_from_its_format():
    """int4 g128 (int4-rtn): the format (one scale per row) and the granularity (groups of 128) are two factors;
    the format alone quantizes per row, both give the recipe back."""
    recipe = load_recipe(REPO / "recipes" / "int4-rtn.yaml")
    factors = recipe_factors(recipe, False, "all")
    keys = {f.key for f in factors}
    assert [f.key for f in factors] == ["groups[0].format", "groups[0].granularity"]
    per_row = cell_recipe(recipe, frozenset({"groups[0].format"}), False, keys).groups[0]
    assert per_row.format.params["group_size"] is None and per_row.format.name == "int4"
    assert cell_recipe(recipe, frozenset(keys), False, keys).groups == recipe.groups
    assert cell_recipe(recipe, frozenset({"groups[0].granularity"}), False, keys) is None
    # formats without a per-row form (mxfp4's fixed blocks) keep one factor
    assert [f.key for f in recipe_factors(load_recipe(REPO / "recipes" / "mxfp4.yaml"), False, "all")] == ["groups[0]"]


def test_cells_of_a_recipe_with_the_native_export_build(tmp_path):
    """mxfp4 exports the native gpt-oss layout, which needs every expert in MXFP4: a cell without the experts'
    format cannot have it, and it is no factor, so cells keep only the GGUF (for the runtime factor)."""
    from quantlab.stages.build import build

    recipe = load_recipe("mxfp4")
    assert "native" in recipe.exports
    baseline_cell = cell_recipe(recipe, frozenset({"runtime"}), runtime=True)
    full_cell = cell_recipe(recipe, frozenset({"groups[0]", "runtime"}), runtime=True)
    assert baseline_cell.exports == ["gguf"] and full_cell.exports == ["gguf"]
    path = tmp_path / "cell.yaml"
    path.write_text(baseline_cell.model_copy(update={"name": "mxfp4.0"}).as_yaml())
    assert (build(path, tmp_path / "cells").path / "model.gguf").is_file()


@pytest.mark.parametrize(
    ("recipe", "factor"),
    [("mxfp4-stale-engine", "serve.effort_honored"), ("mxfp4-wrong-template", "serve.chat_template")],
)
def test_a_serving_case_is_charged_to_its_serving_factor(recipe, factor, tmp_path):
    """The shipped serving cases: the stale engine's loss goes to the dropped effort, the wrong template's to the
    template, each with an interval above zero and above MXFP4's share (harmless at high effort)."""
    result = attribute(
        REPO / "recipes" / f"{recipe}.yaml", ["zoo_aime_style"], limit=60, tokens=1024, artifacts=tmp_path
    )
    task = result.tasks["zoo_aime_style"]
    serving, weights = task["shares_points"][factor], task["shares_points"]["groups[0]"]
    assert serving["ci95"][0] > 0 and serving["value"] > weights["ci95"][1]
    assert serving["value"] >= 0.5 * task["loss_points"]["value"]


def test_cells_computed_as_ray_tasks_give_the_stored_sequential_attribution(attributed_store, tmp_path):
    """The same three-factor attribution with its cells run as Ray tasks (a local cluster of two workers, a
    fresh store): the stored record is the sequential run's, byte for byte, but for the store's own path."""
    pytest.importorskip("ray", reason="--ray needs quantlab[ray]")
    sequential, sequential_store = attributed_store
    path = tmp_path / "two-choices.yaml"
    path.write_text(RECIPE)
    store = tmp_path / "artifacts"
    spread = attribute(path, ["zoo_aime_style"], limit=LIMIT, tokens=1024, artifacts=store, ray="local", workers=2)
    ours = spread.stored_at.read_text().replace(str(store), "STORE").replace(str(path), "RECIPE")
    theirs = sequential.stored_at.read_text().replace(str(sequential_store), "STORE")
    theirs = theirs.replace(sequential.recipe_file, "RECIPE")
    assert ours == theirs
    # every cell the designs read was built and evaluated by the workers, once each
    built = sorted(p.parent.name for p in (store / "attribution").rglob("manifest.json"))
    assert built == sorted(p.parent.name for p in (sequential_store / "attribution").rglob("manifest.json"))
