"""A corpus of malformed recipes: each is one line naming the file, the field and (where it has one) the YAML
line, exit code 2, and nothing written. Runs the real CLI entry point in-process (``quantlab.cli.main``)."""

import sys

import pytest

from quantlab import cli

GOOD_HEAD = "name: bad\nmodel: zoo:tiny-gpt-oss\n"

# name -> (recipe text, substrings the one error line must contain)
CORPUS = {
    "unknown_format": (
        GOOD_HEAD + "groups:\n  - select: {component: experts}\n    format: int9\n",
        ["groups[0].format", ":5:", "unknown format 'int9'"],
    ),
    "bad_format_parameter": (
        GOOD_HEAD + "groups:\n  - select: {component: experts}\n    format: {name: mxfp4, scale_rule: nearest}\n",
        ["groups[0].format", ":5:", "scale_rule"],
    ),
    "bad_layer_range": (
        GOOD_HEAD + "groups:\n  - select: {component: experts, layers: '3-1'}\n    format: mxfp4\n",
        ["groups[0].select.layers", ":4:", "runs backwards"],
    ),
    "layer_range_garbage": (
        GOOD_HEAD + "groups:\n  - select: {layers: 'a-b'}\n    format: mxfp4\n",
        ["groups[0].select.layers", ":4:", "'a-b'"],
    ),
    "selector_matches_nothing": (
        GOOD_HEAD + "groups:\n  - select: {component: experts, layers: '10-11'}\n    format: mxfp4\n",
        ["groups[0].select", ":4:", "selects no weight matrix"],
    ),
    "expert_out_of_range": (
        GOOD_HEAD + "groups:\n  - select: {component: experts}\n    format: mxfp4\n"
        "  - select: {experts: [12]}\n    format: bf16\n",
        ["groups[1].select", ":6:", "selects no weight matrix"],
    ),
    "group_size_not_dividing_row": (
        GOOD_HEAD + "groups:\n  - select: {component: experts}\n    format: {name: int4, group_size: 96}\n",
        ["groups[0].format", ":5:", "multiple of 96"],
    ),
    "lowrank_factor_rows": (
        GOOD_HEAD + "groups:\n  - select: {component: experts}\n    format: mxfp4\n"
        "    method: {name: lowrank, rank_ratio: 0.1}\n",
        ["groups[0].format", ":5:", "low-rank factor of shape (512, 26)", "multiple of 32"],
    ),
    "yaml_syntax_error": (
        GOOD_HEAD + "groups:\n  - select: {component: experts\n    format: mxfp4\n",
        ["YAML syntax error", ":5:"],
    ),
    "wrong_type_groups": (GOOD_HEAD + "groups: experts\n", ["groups", ":3:", "list"]),
    "wrong_type_seed": (
        GOOD_HEAD + "seed: lots\ngroups:\n  - select: {component: experts}\n    format: mxfp4\n",
        ["seed", ":3:", "integer"],
    ),
    "unknown_key": (
        GOOD_HEAD + "grups:\n  - select: {component: experts}\n    format: mxfp4\n",
        ["grups", ":3:", "unknown key"],
    ),
    "unknown_selector_key": (
        GOOD_HEAD + "groups:\n  - select: {component: experts, layer: 1}\n    format: mxfp4\n",
        ["groups[0].select.layer", ":4:", "unknown key"],
    ),
    "unknown_component": (
        GOOD_HEAD + "groups:\n  - select: {component: mlp}\n    format: mxfp4\n",
        ["groups[0].select.component", "unknown component 'mlp'"],
    ),
    "missing_model": (
        "name: bad\ngroups:\n  - select: {component: experts}\n    format: mxfp4\n",
        ["model", "is required"],
    ),
    "model_not_found": (
        "name: bad\nmodel: ./no/such/model\ngroups:\n  - select: {component: experts}\n    format: mxfp4\n",
        ["no/such/model", "hub"],
    ),
    "no_groups": (GOOD_HEAD + "groups: []\n", ["groups", "at least 1"]),
    "empty_selector": (
        GOOD_HEAD + "groups:\n  - select: {}\n    format: mxfp4\n",
        ["groups[0].select", "at least one of"],
    ),
    "unknown_method": (
        GOOD_HEAD + "groups:\n  - select: {component: experts}\n    format: mxfp4\n    method: awq\n",
        ["groups[0].method", ":6:", "unknown method 'awq'"],
    ),
    "lowrank_without_ratio": (
        GOOD_HEAD + "groups:\n  - select: {component: experts}\n    format: mxfp4\n    method: lowrank\n",
        ["groups[0].method", "rank_ratio"],
    ),
    "bad_regex": (
        GOOD_HEAD + "groups:\n  - select: {re: '(experts'}\n    format: mxfp4\n",
        ["groups[0].select.re", "regular expression"],
    ),
    "unknown_export": (
        GOOD_HEAD + "groups:\n  - select: {component: experts}\n    format: mxfp4\nexports: [onnx]\n",
        ["exports[0]", ":6:", "gguf"],
    ),
    "not_a_mapping": ("- just\n- a list\n", ["YAML mapping"]),
    "bad_name": (
        "name: 'my variant!'\nmodel: zoo:tiny-gpt-oss\ngroups:\n  - select: {component: experts}\n    format: mxfp4\n",
        ["name", ":1:"],
    ),
}


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["quantlab", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        cli.main()
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 15


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_malformed_recipe_is_one_line_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    text, expected = CORPUS[case]
    recipe = tmp_path / f"{case}.yaml"
    recipe.write_text(text)
    out = tmp_path / "artifacts"
    code, stdout, stderr = run_main(monkeypatch, capsys, "build", recipe, "--out", out)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {recipe}") or str(recipe) in lines[0] or case == "model_not_found", lines[0]
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists() or not any(out.iterdir())


def test_missing_recipe_file(tmp_path, monkeypatch, capsys):
    code, _, stderr = run_main(monkeypatch, capsys, "build", tmp_path / "nope.yaml", "--out", tmp_path / "a")
    assert code == 2 and "no such recipe file" in stderr and len(stderr.strip().splitlines()) == 1
