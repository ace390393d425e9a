"""The command line: the commands it lists, one-line errors with exit code 2, and nothing half-written."""

import json

import pytest
from transformers import AutoModelForCausalLM

COMMANDS = [
    "build",
    "import",
    "sweep",
    "measure",
    "eval",
    "serve",
    "audit",
    "attribute",
    "report",
    "demo",
    "zoo",
    "bench",
]


def test_help_lists_every_command_of_the_lab(cli):
    result = cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert f" {command} " in result.stdout


def test_audit_of_an_unreachable_or_malformed_url_is_one_line_and_writes_nothing(cli, tmp_path):
    for url in ("http://127.0.0.1:9/v1", "not-a-url"):
        result = cli("audit", url, "--artifacts", tmp_path / "store")
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert not (tmp_path / "store" / "audits").exists()


def test_attribute_of_a_missing_recipe_is_one_line(cli, tmp_path):
    result = cli("attribute", tmp_path / "nope.yaml", "--artifacts", tmp_path / "store")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "nope.yaml" in result.stderr and result.stdout == ""
    assert not (tmp_path / "store").exists()


def test_report_of_a_missing_store_or_variant_is_one_line(cli, tmp_path):
    result = cli("report", "--artifacts", tmp_path / "store", "--out", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "store" in result.stderr
    (tmp_path / "store").mkdir()
    result = cli("report", "int4-rtn", "--artifacts", tmp_path / "store", "--out", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "int4-rtn" in result.stderr
    assert not (tmp_path / "out").exists()


def test_report_never_replaces_a_folder_that_holds_something_else(cli, tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    result = cli("report", "--artifacts", tmp_path / "store", "--out", tmp_path / "out")
    assert result.returncode == 2 and "--out" in result.stderr
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_non_numeric_seed_is_one_line_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "new"
    result = cli("zoo", "train", "--seed", "abc", "--out", out)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--seed" in result.stderr and "abc" in result.stderr
    assert not out.exists()


def test_non_empty_out_without_force_is_refused(cli, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = cli("zoo", "train", "--steps", "1", "--out", tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(tmp_path) in result.stderr and "--force" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("command", [["zoo", "score"], ["zoo", "info"]])
def test_missing_checkpoint_is_one_line(cli, tmp_path, command):
    result = cli(*command, "--model", tmp_path / "nowhere")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "nowhere" in result.stderr


def test_corrupt_checkpoint_is_one_line(cli, tmp_path):
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    result = cli("zoo", "score", "--model", tmp_path, "--count", "1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(tmp_path) in result.stderr


def test_train_with_steps_writes_a_loadable_checkpoint(cli, tmp_path):
    out = tmp_path / "ck"
    result = cli("zoo", "train", "--steps", "2", "--score-items", "0", "--out", out)
    assert result.returncode == 0, result.stderr
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert type(model).__name__ == "GptOssForCausalLM"
    manifest = json.loads((out / "training_manifest.json").read_text())
    assert manifest["result"]["steps"] == 2
    assert manifest["command"].startswith("quantlab zoo train --seed 0 --steps 2 --batch-size 8 --learning-rate")
    assert (out / "chat_template.jinja").is_file()  # the chat model ships its template
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_score_json_counts_what_it_scored(cli):
    result = cli("zoo", "score", "--count", "5", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    # one row per task, effort and template: four efforts (with none asked) and three wrong renderings of the
    # AIME-style task, the GPQA-style task with its template and two wrong ones, and the tool-use task
    assert len(rows) == 11 and len({(r["task"], r["effort"], r["template"]) for r in rows}) == 11
    assert sum(r["task"] == "tool-use" for r in rows) == 1
    assert {r["effort"] for r in rows if r["task"] == "aime-style"} == {"low", "medium", "high", "default"}
    for entry in rows:
        assert set(entry) >= {"task", "effort", "template", "score", "ci95", "n"}
        assert entry["n"] == 5 and entry["correct"] == round(entry["score"] * 5)
        assert entry["ci95"][0] <= entry["score"] <= entry["ci95"][1]


def test_ray_alone_means_a_local_cluster_and_an_unreachable_one_is_one_line(cli, tmp_path):
    from quantlab.cli.app import _optional_values

    assert _optional_values(["attribute", "r.yaml", "--ray"]) == ["attribute", "r.yaml", "--ray", "local"]
    assert _optional_values(["attribute", "--ray", "--workers", "2"]) == [
        "attribute",
        "--ray",
        "local",
        "--workers",
        "2",
    ]
    assert _optional_values(["attribute", "--ray", "ray://head:10001"]) == ["attribute", "--ray", "ray://head:10001"]
    result = cli("attribute", "int4-rtn", "--limit", "2", "--ray", "127.0.0.1:9", "--artifacts", tmp_path / "store")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no Ray cluster answers" in result.stderr
    assert not (tmp_path / "store").exists()
