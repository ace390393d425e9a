"""quantlab eval: lm-eval in-process on the variant as built, repeats, flips and McNemar, the results cache."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from quantlab.stages.evaluate.compare import compare
from quantlab.stages.evaluate.run import evaluate
from quantlab.stages.evaluate.task_specs import task_folders
from quantlab.statistics import bootstrap_interval, mcnemar_exact, pass_at_k

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from quantlab.stages import build as builder

    artifacts = tmp_path_factory.mktemp("artifacts")
    builder.build(REPO / "recipes" / "mxfp4-all.yaml", artifacts)
    return artifacts


def test_scores_equal_lm_eval_on_the_saved_artifact(built):
    """The same task YAML through lm-eval's own simple_evaluate with --apply_chat_template, the model loaded by
    lm-eval from disk: quantlab renders the chat model's prompts as lm-eval does (no effort asked: medium)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    for task in ("zoo_aime_style", "zoo_gpqa_style"):
        ours = evaluate("mxfp4-all", task, limit=40, artifacts=built)
        assert ours.settings["chat_template"] == "model" and "reasoning_effort" not in ours.settings
        theirs = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={built / 'mxfp4-all' / 'model'},dtype=float32,max_length=256,device=cpu",
            tasks=[task],
            task_manager=TaskManager(include_path=[str(f) for f in task_folders()]),
            limit=40,
            log_samples=True,
            apply_chat_template=True,
        )
        samples = sorted(theirs["samples"][task], key=lambda s: s["doc_id"])
        metric = ours.metric
        assert [float(s[metric]) for s in samples] == [row[0] for row in ours.correct]
        assert ours.score == pytest.approx(np.mean([float(s[metric]) for s in samples]))


@pytest.mark.parametrize("effort", ["high", "low"])
def test_greedy_exact_match_equals_quantlab_own_scorer(built, effort):
    """An independent implementation (quantlab.zoo.score: transformers' generate on prompts rendered by the
    model's template, the final channel parsed with special tokens kept) agrees item by item."""
    from quantlab.models.loading import load_model, resolve_model
    from quantlab.zoo import tasks
    from quantlab.zoo.score import exact_match
    from quantlab.zoo.scoring import prompts

    result = evaluate("zoo:tiny-gpt-oss", "zoo_aime_style", limit=60, artifacts=built, reasoning_effort=effort)
    model, tokenizer = load_model(resolve_model("zoo:tiny-gpt-oss"), dtype=torch.float32)
    problems = tasks.problems("test", 60)
    rendered = prompts(tokenizer, problems, effort, "model")
    _, per_item = exact_match(model, tokenizer, rendered, [p.answer for p in problems])
    assert [row[0] for row in result.correct] == [float(x) for x in per_item]


def test_mcnemar_and_bootstrap_by_hand():
    # 11 right->wrong, 5 wrong->right: p = 2 * sum_{i<=5} C(16, i) / 2^16 = 2 * 6885 / 65536
    assert mcnemar_exact(11, 5) == 2 * (1 + 16 + 120 + 560 + 1820 + 4368) / 2**16
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    assert math.isclose(mcnemar_exact(10, 0), 2 / 2**10)
    assert bootstrap_interval(np.ones((30, 4))) == (1.0, 1.0)
    # pass@k by hand: 4 samples; item A 1 correct: pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6; item B none: 0
    two_items = np.array([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=float)
    assert pass_at_k(two_items, 2) == pytest.approx((0.5 + 0.0) / 2)
    assert pass_at_k(two_items, 1) == pytest.approx(0.125) and pass_at_k(two_items, 4) == pytest.approx(0.5)
    correct = (np.arange(200) % 4 == 0).astype(float).reshape(50, 4)
    low, high = bootstrap_interval(correct, seed=3)
    assert low < correct.mean() < high and bootstrap_interval(correct, seed=3) == (low, high)


def test_flips_cache_and_sampled_repeats(built):
    baseline = evaluate("zoo:tiny-gpt-oss", "zoo_aime_style", limit=60, artifacts=built, reasoning_effort="low")
    variant = evaluate("mxfp4-all", "zoo_aime_style", limit=60, artifacts=built, reasoning_effort="low")
    flips = compare(baseline, variant)
    base_right = np.array(baseline.correct)[:, 0] == 1
    variant_right = np.array(variant.correct)[:, 0] == 1
    assert flips["right_to_wrong"] == int((base_right & ~variant_right).sum())
    assert flips["wrong_to_right"] == int((~base_right & variant_right).sum())
    again = evaluate("mxfp4-all", "zoo_aime_style", limit=60, artifacts=built, reasoning_effort="low")
    assert again.cache_hit and again.correct == variant.correct

    sampled = evaluate("mxfp4-all", "zoo_aime_style", limit=20, repeats=3, temperature=1.0, seed=5, artifacts=built)
    assert sampled.seeds == [5, 6, 7] and np.array(sampled.correct).shape == (20, 3)
    assert sampled.ci95[0] <= sampled.score <= sampled.ci95[1]
    stored = built / "mxfp4-all" / "eval" / f"zoo_aime_style-{sampled.settings_hash}.json"
    assert sampled.stored_at == stored
    stored.unlink()  # the record gone: recomputed, and the same answers (seeded)
    again = evaluate("mxfp4-all", "zoo_aime_style", limit=20, repeats=3, temperature=1.0, seed=5, artifacts=built)
    assert not again.cache_hit and again.correct == sampled.correct and stored.is_file()
    stored.write_text(stored.read_text().replace(again.cache_key, "0" * 64))  # a record of other inputs: not trusted
    assert not evaluate(
        "mxfp4-all", "zoo_aime_style", limit=20, repeats=3, temperature=1.0, seed=5, artifacts=built
    ).cache_hit


def test_unknown_task_is_one_line(built, monkeypatch, capsys):
    import sys

    from quantlab import cli

    monkeypatch.setattr(
        sys, "argv", ["quantlab", "eval", "mxfp4-all", "--tasks", "no_such_task", "--artifacts", str(built)]
    )
    with pytest.raises(SystemExit) as done:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and len(err.splitlines()) == 1 and "unknown task 'no_such_task'" in err


SHARED = REPO.parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "aime2025" / "test.jsonl").is_file(), reason="../shared/data not present")
def test_real_task_offline_with_the_shared_aime_file(built, monkeypatch, tmp_path):
    """lm-eval's own aime25 (prompt, filters, scoring), its data from the local file."""
    from quantlab.errors import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = evaluate(
        "mxfp4-all", "aime25", limit=3, max_new_tokens=8, artifacts=built, data_file=SHARED / "aime2025" / "test.jsonl"
    )
    assert result.items == 3 and result.settings["data_sha256"]
    assert result.lm_eval[0]["config"]["doc_to_text"].startswith("Question: {{problem}}")

    with pytest.raises(UserError, match=r"--data aime25=path.jsonl"):
        evaluate("mxfp4-all", "aime25", limit=3, artifacts=built)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"question": "1+1?", "answer": 2}\n')
    with pytest.raises(UserError, match=r"missing column 'problem'"):
        evaluate("mxfp4-all", "aime25", limit=3, artifacts=built, data_file=wrong)


def test_llama_cpp_backend_agrees_with_hf_on_an_f32_export(tmp_path):
    """The same bundled tasks through llama.cpp running an F32 GGUF of the unchanged model: item for item the
    same answers as transformers (only the runtime differs, and on F32 it should not matter)."""
    pytest.importorskip("llama_cpp", reason="needs quantlab[gguf]")
    from quantlab.stages import build as builder

    recipe = tmp_path / "f32.yaml"
    recipe.write_text(
        "name: f32\nmodel: zoo:tiny-gpt-oss\nexports: [gguf]\ngroups:\n  - select: {component: experts}\n    format: bf16\n"
    )
    builder.build(recipe, tmp_path)
    for task in ("zoo_aime_style", "zoo_gpqa_style"):
        hf = evaluate("f32", task, limit=30, artifacts=tmp_path)
        llama = evaluate("f32", task, limit=30, artifacts=tmp_path, backend="llama.cpp")
        assert llama.settings["backend"] == "llama.cpp" and not llama.cache_hit
        assert llama.correct == hf.correct, task


@pytest.mark.skipif(not (SHARED / "gsm8k" / "test.jsonl").is_file(), reason="../shared/data not present")
def test_shared_gsm8k_and_math500_files_work_offline(built, monkeypatch):
    from quantlab.errors import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gsm8k = SHARED / "gsm8k" / "test.jsonl"
    with pytest.raises(UserError, match=r"few-shot examples from its 'train' split.*--num-fewshot 0"):
        evaluate("mxfp4-all", "gsm8k", limit=2, artifacts=built, data_file=gsm8k)
    result = evaluate("mxfp4-all", "gsm8k", limit=2, max_new_tokens=8, num_fewshot=0, artifacts=built, data_file=gsm8k)
    assert result.items == 2 and result.filter == "strict-match"
    # gsm8k's YAML sets no generation length: not lm-eval's silent 256, half the context, recorded
    default = evaluate("mxfp4-all", "gsm8k", limit=1, num_fewshot=0, artifacts=built, data_file=gsm8k)
    assert default.settings["max_gen_toks_default"] == 256 // 2
    math = evaluate(
        "mxfp4-all",
        "minerva_math500",
        limit=2,
        max_new_tokens=8,
        num_fewshot=0,
        artifacts=built,
        data_file=SHARED / "math500" / "test.jsonl",
    )
    assert math.items == 2


def test_endpoint_backend_against_a_real_local_server(tmp_path):
    """lm-eval's OpenAI-compatible client against llama-cpp-python's server on 127.0.0.1 serving a GGUF export:
    the same greedy answers, item for item, as the llama.cpp backend in-process. At low effort: llama.cpp ends
    generation at <|end|> unless the vocabulary also has <|call|> (its o200k_harmony rule), so the server stops
    after the analysis channel of a medium or high effort answer (docs/chat.md)."""
    pytest.importorskip("llama_cpp.server.app", reason="needs quantlab[gguf] (llama-cpp-python[server])")
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from quantlab.stages import build as builder

    recipe = tmp_path / "served.yaml"
    recipe.write_text(
        "name: served\nmodel: zoo:tiny-gpt-oss\nexports: [gguf]\ngroups:\n  - select: {component: experts}\n    format: gguf:Q4_K\n"
    )
    builder.build(recipe, tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(tmp_path / "served" / "model.gguf"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "256",
            "--n_threads",
            "2",
            "--seed",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
                time.sleep(0.25)
        served = evaluate(
            "served",
            "zoo_aime_style",
            limit=20,
            artifacts=tmp_path,
            backend="endpoint",
            endpoint=f"http://127.0.0.1:{port}/v1",
            reasoning_effort="low",
            # llama-cpp-python's server applies repeat_penalty 1.1 unless the request says otherwise: a serving
            # default that changes greedy answers (1 of these 20 without this)
            generation={"repeat_penalty": 1.0},
        )
        local = evaluate(
            "served", "zoo_aime_style", limit=20, artifacts=tmp_path, backend="llama.cpp", reasoning_effort="low"
        )
        assert sum(row[0] for row in local.correct) > 0
        assert served.settings["endpoint"].endswith(f":{port}/v1")
        assert served.correct == local.correct
        assert [s["response"] for s in served.lm_eval[0]["samples"]] == [
            s["response"] for s in local.lm_eval[0]["samples"]
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)


def _gpqa_csv(path, rows):
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_gpqa_offline_from_the_official_csv_layout_with_per_item_shuffles(tmp_path, monkeypatch):
    """lm-eval's gpqa_diamond_zeroshot on a CSV in GPQA's own columns; each item's choice order is seeded by
    the item (lm-eval shuffles with the global random state, so an item's order depended on its neighbours)."""
    from quantlab.errors import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [
        {
            "Question": f"What is {a}+{a}?",
            "Correct Answer": f"{2 * a} apples",
            "Incorrect Answer 1": f"{2 * a + 1} apples",
            "Incorrect Answer 2": f"{2 * a - 1} apples",
            "Incorrect Answer 3": f"{a} apples",
        }
        for a in range(3, 9)
    ]
    _gpqa_csv(tmp_path / "gpqa.csv", rows)
    _gpqa_csv(tmp_path / "reversed.csv", rows[::-1])
    forward = evaluate(
        "zoo:tiny-gpt-oss", "gpqa_diamond_zeroshot", artifacts=tmp_path / "a", data_file=tmp_path / "gpqa.csv"
    )
    backward = evaluate(
        "zoo:tiny-gpt-oss", "gpqa_diamond_zeroshot", artifacts=tmp_path / "b", data_file=tmp_path / "reversed.csv"
    )
    assert forward.items == 6
    letters = {s["target"] for s in forward.lm_eval[0]["samples"]}
    assert len(letters) > 1  # the correct answer is not always in the same position
    by_question = lambda result: {s["doc_id"]: s["target"] for s in result.lm_eval[0]["samples"]}  # noqa: E731
    f, b = by_question(forward), by_question(backward)
    assert [f[i] for i in range(6)] == [b[5 - i] for i in range(6)]

    _gpqa_csv(
        tmp_path / "wrong.csv", [{k.replace("Correct Answer", "Right Answer"): v for k, v in r.items()} for r in rows]
    )
    with pytest.raises(UserError, match=r"missing column 'Correct Answer'"):
        evaluate(
            "zoo:tiny-gpt-oss", "gpqa_diamond_zeroshot", artifacts=tmp_path / "c", data_file=tmp_path / "wrong.csv"
        )


def test_task_generation_settings_are_applied_and_recorded(built):
    """--gen zoo_aime_style:max_gen_toks=4 cuts every chain before its answer: all wrong, and recorded."""
    short = evaluate("mxfp4-all", "zoo_aime_style", limit=10, artifacts=built, generation={"max_gen_toks": 4})
    assert short.settings["generation"] == {"max_gen_toks": 4}
    assert short.score == 0.0 and all(len(s["response"] or "") <= 12 for s in short.lm_eval[0]["samples"])


def test_reasoning_effort_and_the_wrong_templates_reach_the_prompt(built, tmp_path):
    """The effort reaches the model's template (no effort: medium, item for item); a named wrong template and a
    Jinja file render what quantlab.chat renders; a file is recorded with its hash; mistakes are one line."""
    from quantlab import chat
    from quantlab.errors import UserError
    from quantlab.zoo import tasks

    def prompts_of(result):
        return [s["prompt"] for s in result.lm_eval[0]["samples"]]

    default = evaluate("zoo:tiny-gpt-oss", "zoo_aime_style", limit=20, artifacts=built)
    medium = evaluate("zoo:tiny-gpt-oss", "zoo_aime_style", limit=20, artifacts=built, reasoning_effort="medium")
    assert default.correct == medium.correct and default.cache_key != medium.cache_key
    problem = tasks.problems("test", 1)[0]
    for template in ("chatml", "final-only", "plain"):
        result = (
            evaluate(
                "zoo:tiny-gpt-oss",
                "zoo_aime_style",
                limit=3,
                artifacts=built,
                chat_template=template,
                reasoning_effort="high",
            )
            if template != "plain"
            else evaluate("zoo:tiny-gpt-oss", "zoo_aime_style", limit=3, artifacts=built, chat_template=template)
        )
        assert result.settings["chat_template"] == template
        expected = chat.render(
            chat.template_source(template, tasks.chat_template()), [tasks.user_message(problem)], "high"
        )
        assert prompts_of(result)[0] == (expected if template != "plain" else problem.expression)
    jinja = tmp_path / "shouting.jinja"
    jinja.write_text("{% for m in messages %}{{ m.content }}!{% endfor %}")
    result = evaluate("zoo:tiny-gpt-oss", "zoo_aime_style", limit=3, artifacts=built, chat_template=str(jinja))
    assert prompts_of(result)[0] == problem.expression + "!" and len(result.settings["chat_template_sha256"]) == 64
    with pytest.raises(UserError, match="plain"):
        evaluate(
            "zoo:tiny-gpt-oss",
            "zoo_aime_style",
            limit=2,
            artifacts=built,
            chat_template="plain",
            reasoning_effort="low",
        )
    with pytest.raises(UserError, match="neither a name"):
        evaluate("zoo:tiny-gpt-oss", "zoo_aime_style", limit=2, artifacts=built, chat_template="chatmll")
    with pytest.raises(UserError, match="--reasoning-effort extreme"):
        evaluate("zoo:tiny-gpt-oss", "zoo_aime_style", limit=2, artifacts=built, reasoning_effort="extreme")
