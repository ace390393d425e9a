"""The paths a new user takes, against fresh stores (no variant, one, several): each command works or ends in
one line on stderr with exit code 2, never a traceback; and every command the README and the docs show is
one the CLI accepts (its options exist, its values parse)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from quantlab import cli

REPO = Path(__file__).resolve().parent.parent
AIME25 = REPO.parent / "shared" / "data" / "aime2025" / "test.jsonl"


def quantlab(*args: str, monkeypatch=None, capsys=None) -> tuple[int, str, str]:
    """Runs the real entry point in-process; (exit code, stdout, stderr). An exception other than the CLI's own
    exit propagates, failing the test with its traceback, which is what a user would have seen."""
    sys.argv = ["quantlab", *args]
    code = 0
    try:
        cli.main()
    except SystemExit as done:
        code = int(done.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *words: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, f"exit {code}, stderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


@pytest.fixture(scope="module")
def one_variant(tmp_path_factory):
    """A store holding one built variant (mxfp4, built by its shipped recipe's name)."""
    from quantlab.stages.build import build

    store = tmp_path_factory.mktemp("one")
    build("mxfp4", store)
    return store


def test_build_by_name_from_any_directory_and_a_report_of_one_measured_variant(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here: the shipped recipe is package data
    store = tmp_path / "store"
    code, out, err = quantlab("build", "mxfp4", "--artifacts", str(store), capsys=capsys)
    assert code == 0 and (store / "mxfp4" / "manifest.json").is_file(), err
    code, out, err = quantlab("measure", "mxfp4", "--artifacts", str(store), "--tokens", "256", capsys=capsys)
    assert code == 0, err
    code, out, err = quantlab("report", "--artifacts", str(store), "--out", str(tmp_path / "r"), capsys=capsys)
    assert code == 0, err
    html = (tmp_path / "r" / "report.html").read_text()
    assert "mxfp4" in html and "expert" in html.lower()
    # without --out, the report goes beside the store it reads (not into ./artifacts of wherever it ran)
    code, out, err = quantlab("report", "--artifacts", str(store), capsys=capsys)
    assert code == 0 and (store / "report" / "report.html").is_file(), err
    assert not (tmp_path / "artifacts").exists()


def test_eval_without_a_subject_evaluates_the_store_or_the_default_model(one_variant, tmp_path, capsys):
    code, out, err = quantlab(
        "eval", "--tasks", "zoo_aime_style", "--limit", "4", "--artifacts", str(one_variant), "--json", capsys=capsys
    )
    assert code == 0, err
    rows = json.loads(out)
    assert [r["subject"] for r in rows] == ["mxfp4"] and "no subject given" in err and "mxfp4" in err
    empty = tmp_path / "empty"
    code, out, err = quantlab(
        "eval", "--tasks", "zoo_aime_style", "--limit", "4", "--artifacts", str(empty), "--json", capsys=capsys
    )
    assert code == 0, err
    assert [r["subject"] for r in json.loads(out)] == ["zoo-tiny-gpt-oss"] and "default model zoo:tiny-gpt-oss" in err


def test_a_store_with_no_variant_or_none_at_all(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    one_line_error(
        *quantlab("report", "--artifacts", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), capsys=capsys)[::2],
        "no variant built",
    )
    one_line_error(
        *quantlab("report", "--artifacts", str(tmp_path / "none"), "--out", str(tmp_path / "r"), capsys=capsys)[::2],
        "no such store",
    )
    one_line_error(
        *quantlab("measure", "mxfp4", "--artifacts", str(tmp_path / "empty"), capsys=capsys)[::2],
        "not built",
        "quantlab build",
    )
    assert not any((tmp_path / "empty").iterdir())  # nothing written by the failed commands


@pytest.mark.parametrize(
    "args, words",
    [
        (["build"], ["Missing argument"]),
        (["build", "nosuch"], ["nosuch", "shipped"]),
        (["build", "recipes/nosuch.yaml"], ["no such recipe file"]),
        (["eval", "mxfp4", "--tasks", "nosuch_task"], ["unknown task 'nosuch_task'"]),
        (["eval", "mxfp4", "--tasks", "zoo_aime_style", "--backend", "nosuch"], ["backend 'nosuch'", "known: hf"]),
        (["eval", "mxfp4", "--tasks", "zoo_aime_style", "--data", "nonsense"], ["--data"]),
        (["eval", "mxfp4", "--tasks", "zoo_aime_style", "--limit", "0"], ["--limit"]),
        (["eval", "nosuch", "--tasks", "zoo_aime_style"], ["nosuch", "neither a variant"]),
        (["measure", "mxfp4", "--tokens", "abc"], ["--tokens", "abc"]),
        (["measure", "nosuch"], ["nosuch", "not built"]),
        (["measure", "mxfp4", "--text", "zoo:aime-style:nosplit:high"], ["zoo:aime-style:SPLIT:EFFORT"]),
        (["measure", "mxfp4", "--text", "missing.txt"], ["no such file"]),
        (["measure", "mxfp4", "--scoring", "nosuch"], ["--scoring 'nosuch'"]),
        (["measure", "mxfp4", "--scoring", "llama-perplexity"], ["needs --text"]),
        (["measure", "mxfp4", "--scoring", "llama-perplexity", "--text", "README.md", "--ctx", "100000"], ["--ctx"]),
        (["attribute", "nosuch.yaml"], ["no such recipe file"]),
        (["attribute", "mxfp4", "--design", "nosuch"], ["--design"]),
        (["attribute", "mxfp4", "--factors", "nosuch"], ["--factors"]),
        (["report", "nosuch"], ["nosuch", "not built"]),
        (["zoo", "info", "--model", "/nonexistent/checkpoint"], ["no such checkpoint"]),
        (["eval", "--tasks", ""], ["--tasks"]),
        (["demo", "--count", "0"], ["--count"]),
        (["bench", "formats", "--repeats", "0"], ["--repeats"]),
    ],
)
def test_a_missing_or_odd_argument_is_one_line(one_variant, tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(REPO)  # as a user in the repository
    store_args = ["--artifacts", str(one_variant)] if args[0] in ("eval", "measure", "attribute", "report") else []
    if args[0] == "report":
        store_args += ["--out", str(tmp_path / "r")]
    code, out, err = quantlab(*args, *store_args, capsys=capsys)
    one_line_error(code, err, *words)


def test_a_hub_task_without_the_hub_is_one_line_even_without_offline_mode(one_variant, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the hub is unreachable
    code, out, err = quantlab(
        "eval",
        "mxfp4",
        "--tasks",
        "gpqa_diamond_zeroshot",
        "--limit",
        "2",
        "--artifacts",
        str(one_variant),
        capsys=capsys,
    )
    one_line_error(code, err, "gpqa_diamond_zeroshot", "--data gpqa_diamond_zeroshot=")


@pytest.mark.skipif(not AIME25.is_file(), reason="needs ../shared/data/aime2025/test.jsonl")
def test_a_long_context_task_is_clamped_to_the_model_and_says_so(one_variant, capsys):
    code, out, err = quantlab(
        "eval",
        "mxfp4",
        "--tasks",
        "aime25",
        "--data",
        f"aime25={AIME25}",
        "--limit",
        "1",
        "--artifacts",
        str(one_variant),
        "--json",
        capsys=capsys,
    )
    assert code == 0, err
    clamped = json.loads(out)[0]["settings"]["max_gen_toks_clamped"]
    assert clamped["requested"] == 32768 and clamped["context"] == 256 and clamped["used"] == 128


def test_several_variants_evaluated_and_reported(one_variant, tmp_path, capsys):
    from quantlab.stages.build import build

    build("int4-rtn", one_variant)
    code, out, err = quantlab(
        "eval",
        "--tasks",
        "zoo_gpqa_style",
        "--limit",
        "8",
        "--baseline",
        "mxfp4",
        "--artifacts",
        str(one_variant),
        "--json",
        capsys=capsys,
    )
    assert code == 0, err
    rows = json.loads(out)
    assert sorted(r["subject"] for r in rows) == ["int4-rtn", "mxfp4"] and all("flips" in r for r in rows)
    code, out, err = quantlab(
        "report", "--artifacts", str(one_variant), "--out", str(tmp_path / "r"), "--baseline", "mxfp4", capsys=capsys
    )
    assert code == 0, err and (tmp_path / "r" / "report.md").is_file()


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """A build into a 6 MB tmpfs (needs root to mount; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "quantlab", "build", "bf16", "--artifacts", str(disk)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert str(disk) in lines[0] and "MB" in lines[0] and ("disk" in lines[0])
        assert not [p for p in disk.rglob("*") if p.is_file()]  # nothing half-written
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def _documented_commands() -> list[str]:
    """Every complete ``quantlab ...`` command in the README and docs (code blocks and inline code); usage
    summaries with placeholders (``[--quality]``, ``<variant>``, ``NAME``) are not commands."""
    commands = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "recipes" / "README.md"]:
        text = path.read_text()
        candidates = [" ".join(c.split()) for c in re.findall(r"`((?:\.venv/bin/)?quantlab [^`]+)`", text)]
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
            candidates += [line.strip().lstrip("$ ") for line in block.replace("\\\n", " ").splitlines()]
        for candidate in candidates:
            for part in re.split(r"&&|;|\|", candidate.split("#")[0]):
                part = " ".join(part.split()).removeprefix(".venv/bin/")
                words = part.split()
                mention = len(words) <= (
                    3 if len(words) > 1 and words[1] in ("zoo", "bench") else 2
                )  # a command's name in prose
                if (
                    part.startswith("quantlab ")
                    and not mention
                    and not re.search(r"[\[<>]|\.\.\.| / |\bDIR\b|\bNAME\b|\bVARIANTS?\b|\bRECIPE\b", part)
                ):
                    commands.append(part)
    return sorted(set(commands))


def test_the_documented_commands_are_commands_the_cli_accepts():
    from quantlab.cli.app import _optional_values, quantlab_group

    group = quantlab_group()
    commands = _documented_commands()
    assert len(commands) >= 12, commands
    for command in commands:
        args = _optional_values(shlex.split(command)[1:])  # as main() hands them to click (a bare --ray)
        ctx = group.make_context("quantlab", list(args))
        name, sub, rest = group.resolve_command(ctx, _remaining(ctx))
        while hasattr(sub, "resolve_command"):  # a command group (zoo, bench)
            inner = sub.make_context(name, rest, parent=ctx)
            name, sub, rest = sub.resolve_command(inner, _remaining(inner))
            ctx = inner
        sub.make_context(name, rest, parent=ctx)  # raises a UsageError for an unknown option or a bad value


def _remaining(ctx) -> list[str]:
    """What a group's context leaves for its subcommand (click keeps the subcommand's name apart)."""
    protected = getattr(ctx, "_protected_args", None)
    return list(protected if protected is not None else ctx.protected_args) + list(ctx.args)


def test_nan_weights_name_the_checkpoint_and_the_matrix(tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    from quantlab.models.loading import resolve_model

    model = tmp_path / "damaged"
    shutil.copytree(resolve_model("zoo:tiny-gpt-oss"), model)
    tensors = load_file(model / "model.safetensors")
    tensors["model.layers.1.mlp.experts.down_proj"][3, 0, 0] = float("nan")
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    recipe = tmp_path / "nan.yaml"
    recipe.write_text(f"name: nan\nmodel: {model}\ngroups:\n  - select: {{component: experts}}\n    format: mxfp4\n")
    store = tmp_path / "store"
    code, out, err = quantlab("build", str(recipe), "--artifacts", str(store), capsys=capsys)
    one_line_error(code, err, str(model), "model.layers.1.mlp.experts.down_proj[3]", "NaN")
    assert not store.exists() or not any(store.iterdir())
