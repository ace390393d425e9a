"""quantlab measure against independent computations on the embedded model."""

import copy

import numpy as np
import pytest
import torch

from quantlab.models.loading import load_model, resolve_model
from quantlab.stages.measure.run import measure_pair
from quantlab.stages.measure.text import evaluation_text


@pytest.fixture(scope="module")
def baseline():
    model, tokenizer = load_model(resolve_model("zoo:tiny-gpt-oss"), dtype=torch.float32)
    return model, tokenizer, evaluation_text(tokenizer, max_tokens=1500)


def test_identical_variant_measures_zero(baseline):
    model, _, text = baseline
    result = measure_pair(model, copy.deepcopy(model), text)
    for part in ("all_tokens", "answer_tokens"):
        logits = result["logits"][part]
        assert logits["perplexity_ratio"] == 1.0
        assert logits["kl_divergence"]["max"] == 0.0 and logits["same_top"]["rate"] == 1.0
    for layer in result["layers"]:
        assert layer["router"]["jaccard_mean"] == 1.0 and layer["router"]["top1_flip_rate"] == 0.0
        assert layer["hidden_state"]["relative_error"] == 0.0
        assert all(e["isolated_relative_error"] in (0.0, None) for e in layer["experts"])


def test_a_perturbed_expert_is_isolated_exactly(baseline):
    """Scaling one expert's down projection and bias by 1.1 scales its output by 1.1: isolated error 0.1 for
    that expert, exactly 0 for every other one; the hidden states drift only from that layer on."""
    model, _, text = baseline
    variant = copy.deepcopy(model)
    layer, expert = 2, 5
    with torch.no_grad():
        variant.model.layers[layer].mlp.experts.down_proj[expert] *= 1.1
        variant.model.layers[layer].mlp.experts.down_proj_bias[expert] *= 1.1
    result = measure_pair(model, variant, text)
    for summary in result["layers"]:
        for e in summary["experts"]:
            if (summary["layer"], e["expert"]) == (layer, expert):
                assert e["isolated_relative_error"] == pytest.approx(0.1, rel=1e-6)
            else:
                assert e["isolated_relative_error"] in (0.0, None)
        drift = summary["hidden_state"]["relative_error"]
        assert (drift == 0.0) == (summary["layer"] < layer)


def _router_choices(model, text):
    """Top-k indices of every layer's router for the real tokens, computed directly from router logits."""
    logits = {}
    hooks = [
        layer.mlp.router.register_forward_hook(lambda m, a, out, i=i: logits.setdefault(i, []).append(out[0]))
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        model(text.tokens, attention_mask=text.attention)
    for hook in hooks:
        hook.remove()
    real = text.attention.reshape(-1).bool()
    k = model.config.num_experts_per_tok
    return {i: torch.cat(v)[real].topk(k, dim=-1).indices.numpy() for i, v in logits.items()}


def test_router_and_logit_statistics_equal_direct_computations(baseline):
    model, _, text = baseline
    variant = copy.deepcopy(model)
    with torch.no_grad():  # nudge the routers and an attention matrix so that routing and logits change
        for layer in variant.model.layers:
            layer.mlp.router.weight += 0.02 * torch.randn(
                layer.mlp.router.weight.shape, generator=torch.Generator().manual_seed(1)
            )
        variant.model.layers[1].self_attn.o_proj.weight *= 1.05
    result = measure_pair(model, variant, text)

    base_choice, variant_choice = _router_choices(model, text), _router_choices(variant, text)
    experts = model.config.num_local_experts
    for summary in result["layers"]:
        a, b = base_choice[summary["layer"]], variant_choice[summary["layer"]]
        sets_a, sets_b = [set(r) for r in a], [set(r) for r in b]
        jaccard = np.mean([len(x & y) / len(x | y) for x, y in zip(sets_a, sets_b)])
        assert summary["router"]["jaccard_mean"] == pytest.approx(jaccard, abs=1e-12)
        assert summary["router"]["exact_set_rate"] == pytest.approx(np.mean([x == y for x, y in zip(sets_a, sets_b)]))
        assert summary["router"]["top1_flip_rate"] == pytest.approx(np.mean(a[:, 0] != b[:, 0]))
        load_a = np.bincount(a.reshape(-1), minlength=experts) / a.size
        load_b = np.bincount(b.reshape(-1), minlength=experts) / b.size
        mask = load_a > 0
        assert summary["router"]["load_kl"] == pytest.approx(
            float((load_a[mask] * np.log(load_a[mask] / load_b[mask])).sum()), rel=1e-9
        )
        assert [e["tokens_baseline"] for e in summary["experts"]] == np.bincount(
            a.reshape(-1), minlength=experts
        ).tolist()
    assert any(s["router"]["top1_flip_rate"] > 0 for s in result["layers"])

    # Logit statistics from the logits themselves, in numpy. One batch here, batches of 8 there: float32 logits
    # agree to about 1e-7, hence the tolerances.
    with torch.no_grad():
        p_logits = model(text.tokens, attention_mask=text.attention).logits[:, :-1].double().numpy()
        q_logits = variant(text.tokens, attention_mask=text.attention).logits[:, :-1].double().numpy()
    valid = text.attention[:, 1:].numpy().astype(bool)
    answer = text.answer_mask[:, 1:].numpy() & valid
    analysis = text.analysis_mask[:, 1:].numpy() & valid

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    log_p, log_q = log_softmax(p_logits), log_softmax(q_logits)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    targets = text.tokens[:, 1:].numpy()
    nll_p = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    nll_q = -np.take_along_axis(log_q, targets[..., None], -1)[..., 0]
    parts = {
        "all_tokens": valid,
        "answer_tokens": answer,
        "analysis_tokens": analysis,
        "response_tokens": answer | analysis,
    }
    for part, mask in parts.items():
        stats = result["logits"][part]
        assert stats["n"] == mask.sum()
        assert stats["kl_divergence"]["mean"] == pytest.approx(kl[mask].mean(), rel=1e-5)
        for p in (99.9, 99.0, 90.0, 50.0, 1.0):
            assert stats["kl_divergence"][f"p{p:g}"] == pytest.approx(np.percentile(kl[mask], p), rel=1e-3, abs=1e-9)
        assert stats["kl_divergence"]["mean_stderr"] == pytest.approx(
            kl[mask].std(ddof=1) / np.sqrt(mask.sum()), rel=1e-5
        )
        same = (log_p.argmax(-1) == log_q.argmax(-1))[mask]
        assert stats["same_top"]["rate"] == pytest.approx(same.mean())
        assert stats["same_top"]["stderr"] == pytest.approx(np.sqrt(same.mean() * (1 - same.mean()) / mask.sum()))
        ratio = np.exp(nll_q[mask].mean()) / np.exp(nll_p[mask].mean())
        assert stats["perplexity_ratio"] == pytest.approx(ratio, rel=1e-6)
        # Δp as llama-perplexity defines it: p_variant(target) - p_baseline(target) (its "Mean Δp", "RMS Δp")
        delta_target = (np.exp(-nll_q) - np.exp(-nll_p))[mask]
        assert stats["delta_p"]["mean"] == pytest.approx(delta_target.mean(), rel=1e-5, abs=1e-9)
        assert stats["delta_p"]["rms"] == pytest.approx(np.sqrt((delta_target**2).mean()), rel=1e-5)
        top = log_p.argmax(-1)[..., None]  # and quantlab's own, of the baseline's top token
        delta_top = (np.exp(np.take_along_axis(log_q, top, -1)) - np.exp(np.take_along_axis(log_p, top, -1)))[..., 0][
            mask
        ]
        assert stats["delta_p_top"]["mean"] == pytest.approx(delta_top.mean(), rel=1e-5, abs=1e-9)
        if part == "all_tokens":  # two quantities (on answers the baseline's top token is the target every time)
            assert stats["delta_p"]["mean"] != pytest.approx(stats["delta_p_top"]["mean"], rel=1e-3)


def test_the_masks_cover_the_final_answer_and_the_analysis_channel(baseline):
    """On the default text (validation conversations at low, medium, high effort in turn) the answer tokens
    decode to the final channel's integer and the analysis tokens to the chain the effort writes."""
    from quantlab.zoo import tasks

    _, tokenizer, text = baseline
    problems = tasks.problems("validation", text.tokens.shape[0])
    for row, problem in enumerate(problems):
        ids = text.tokens[row]
        assert tokenizer.decode(ids[text.answer_mask[row]]) == str(problem.answer)
        chain = tasks.analysis_text(problem.steps(), tasks.EFFORTS[row % 3])
        assert tokenizer.decode(ids[text.analysis_mask[row]]) == chain


@torch.no_grad()
def test_a_packed_corpus_reads_as_the_documents_do(baseline):
    """The model was trained on packed rows: on test conversations packed one after another and read as
    llama-perplexity reads a corpus (chunks of 256, second half scored), its perplexity is close to the one on the
    same conversations one per row (both computed here from the logits, all tokens)."""
    from quantlab.zoo import tasks

    model, tokenizer, _ = baseline
    texts = [tasks.conversation_text(p, tasks.EFFORTS[i % 3]) for i, p in enumerate(tasks.problems("test", 120))]
    nll, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        nll -= float(logp[:-1].gather(-1, ids[0, 1:, None]).sum())
        count += ids.shape[1] - 1
    per_document = np.exp(nll / count)
    ids = tokenizer("".join(texts))["input_ids"]
    n_ctx, nll, count = 256, 0.0, 0
    for start in range(0, len(ids) - n_ctx + 1, n_ctx):
        chunk = torch.tensor([ids[start : start + n_ctx]])
        logp = torch.log_softmax(model(chunk).logits[0].double(), -1)
        first = n_ctx // 2
        nll -= float(logp[first:-1].gather(-1, chunk[0, first + 1 :, None]).sum())
        count += n_ctx - 1 - first
    packed = np.exp(nll / count)
    assert per_document < 3.0  # the conversation is mostly predictable: no 20,000 over a small vocabulary
    assert packed == pytest.approx(per_document, rel=0.15)


def test_gguf_variant_reports_the_runtime_share(tmp_path):
    """An F32 GGUF of an unchanged model: llama.cpp's KL from the baseline is ~0, i.e. the runtime adds nothing
    measurable; a Q4_K variant gets both KLs and their difference."""
    pytest.importorskip("llama_cpp", reason="needs quantlab[gguf]")
    from quantlab.stages import build as builder
    from quantlab.stages.measure.run import measure_variant

    for name, groups in (
        ("same", "  - select: {component: experts}\n    format: bf16\n"),
        ("q4k", "  - select: {component: experts}\n    format: gguf:Q4_K\n"),
    ):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(f"name: {name}\nmodel: zoo:tiny-gpt-oss\nexports: [gguf]\ngroups:\n{groups}")
        builder.build(recipe, tmp_path / "artifacts")
    same = measure_variant("same", artifacts=tmp_path / "artifacts", max_tokens=1500)
    share = same.llama_cpp["runtime_share"]["response_tokens"]
    assert (
        share["mean_kld_torch"] == 0.0 and share["mean_kld_llama_cpp"] < 1e-4
    )  # two runtimes' float32 arithmetic (~2e-5)
    assert (tmp_path / "artifacts" / "same" / "measure" / "experts_heatmap.png").is_file()
    q4k = measure_variant("q4k", artifacts=tmp_path / "artifacts", max_tokens=1500)
    share = q4k.llama_cpp["runtime_share"]["response_tokens"]
    assert share["mean_kld_torch"] > 1e-4 and share["mean_kld_llama_cpp"] > 1e-4
    assert share["mean_kld_difference"] == pytest.approx(share["mean_kld_llama_cpp"] - share["mean_kld_torch"])


def test_measure_command_writes_its_outputs(tmp_path, monkeypatch, capsys):
    import json
    import sys
    from pathlib import Path

    from quantlab import cli
    from quantlab.stages import build as builder

    recipes = Path(__file__).resolve().parent.parent / "recipes"
    builder.build(recipes / "int4-rtn.yaml", tmp_path)
    text = tmp_path / "text.jsonl"
    text.write_text(
        "\n".join(
            json.dumps({"question": f"effort:high Q:{a}+{b}=? A:", "solution": f"{a + b} #### {a + b}"})
            for a in range(10, 40)
            for b in range(3, 9)
        )
        + "\n"
    )
    monkeypatch.setattr(
        sys,
        "argv",
        ["quantlab", "measure", "int4-rtn", "--artifacts", str(tmp_path), "--text", str(text), "--tokens", "2000"],
    )
    cli.main()  # returns normally on success
    out = capsys.readouterr().out
    assert "int4-rtn" in out and "ppl ratio" in out
    folder = tmp_path / "int4-rtn" / "measure"
    assert {p.name for p in folder.iterdir()} == {
        "measure.json",
        "experts.csv",
        "layers.csv",
        "experts_heatmap.png",
        "router_agreement.png",
    }
    result = json.loads((folder / "measure.json").read_text())
    assert result["text"] == str(text) and result["answer_tokens"] > 0
    assert len(result["layers"]) == 4 and all(len(layer["experts"]) == 8 for layer in result["layers"])
    assert result["layers"][0]["experts"][0]["weight_error"]  # from the build manifest

    # the same measurement again is the stored one; another length, an edited text or --force measure again
    from quantlab.stages.measure.run import measure_variant

    again = measure_variant("int4-rtn", None, str(text), 2000, tmp_path)
    assert again.cache_hit and again.to_dict() == result
    assert not measure_variant("int4-rtn", None, str(text), 1000, tmp_path).cache_hit
    text.write_text(
        text.read_text() + json.dumps({"question": "effort:high Q:9+9=? A:", "solution": "18 #### 18"}) + "\n"
    )
    assert not measure_variant("int4-rtn", None, str(text), 1000, tmp_path).cache_hit
    assert not measure_variant("int4-rtn", None, str(text), 1000, tmp_path, force=True).cache_hit


def test_missing_variant_is_one_line(tmp_path, monkeypatch, capsys):
    import sys

    from quantlab import cli

    monkeypatch.setattr(sys, "argv", ["quantlab", "measure", "nothing-built", "--artifacts", str(tmp_path)])
    with pytest.raises(SystemExit) as done:
        cli.main()
    err = capsys.readouterr().err
    assert done.value.code == 2 and len(err.strip().splitlines()) == 1 and "quantlab build" in err


def test_llama_perplexity_scoring_is_the_tools_chunking(baseline, tmp_path):
    """tools/perplexity/perplexity.cpp: consecutive chunks of n_ctx tokens, the tail dropped, and only the
    logits at first = n_ctx/2 ... n_ctx-2 scored (n_ctx - 1 - n_ctx/2 targets per chunk). Recomputed here from
    the definition with one forward pass per chunk."""
    from quantlab.stages.measure.text import llama_perplexity_text
    from quantlab.zoo import tasks

    model, tokenizer, _ = baseline
    path = tmp_path / "plain.txt"
    path.write_text("".join(tasks.conversation_text(p, "high") for p in tasks.problems("validation", 200)))
    n_ctx = 64
    text = llama_perplexity_text(tokenizer, path, n_ctx, max_tokens=1000)
    ids = tokenizer(path.read_text())["input_ids"]
    chunks = 1000 // n_ctx
    assert text.tokens.shape == (chunks, n_ctx) and text.tokens.reshape(-1).tolist() == ids[: chunks * n_ctx]
    assert text.answer_mask.sum(1).tolist() == [n_ctx - 1 - n_ctx // 2] * chunks

    variant = copy.deepcopy(model)
    with torch.no_grad():
        variant.model.layers[0].self_attn.o_proj.weight *= 1.1
    result = measure_pair(model, variant, text)["logits"]["answer_tokens"]
    first = n_ctx // 2
    nll_p, nll_q, kl = [], [], []
    with torch.no_grad():
        for chunk in text.tokens:
            lp = torch.log_softmax(model(chunk[None]).logits[0].double(), -1)[first : n_ctx - 1]
            lq = torch.log_softmax(variant(chunk[None]).logits[0].double(), -1)[first : n_ctx - 1]
            targets = chunk[first + 1 :]
            nll_p += (-lp.gather(-1, targets[:, None])[:, 0]).tolist()
            nll_q += (-lq.gather(-1, targets[:, None])[:, 0]).tolist()
            kl += (lp.exp() * (lp - lq)).sum(-1).tolist()
    assert result["n"] == chunks * (n_ctx - 1 - first)
    assert result["perplexity_baseline"]["ppl"] == pytest.approx(np.exp(np.mean(nll_p)), rel=1e-6)
    assert result["perplexity_ratio"] == pytest.approx(np.exp(np.mean(nll_q) - np.mean(nll_p)), rel=1e-6)
    assert result["kl_divergence"]["mean"] == pytest.approx(np.mean(kl), rel=1e-4)  # float32: batched vs one chunk


def test_llama_perplexity_scoring_needs_two_chunks(baseline, tmp_path):
    from quantlab.errors import UserError
    from quantlab.stages.measure.text import llama_perplexity_text

    _, tokenizer, _ = baseline
    (tmp_path / "short.txt").write_text("Q:1+1=? A:2")
    with pytest.raises(UserError, match="at least 2 x --ctx"):
        llama_perplexity_text(tokenizer, tmp_path / "short.txt", 64)
