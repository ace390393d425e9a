"""The gguf export: llama.cpp (through llama-cpp-python) loads it, its tensors carry exactly the plan's types
and quantlab's block bytes, and its logits match the variant's (F32: within 1e-3; quantized: reported)."""

import json

import numpy as np
import pytest
import torch

from quantlab.stages import build as builder

pytest.importorskip("llama_cpp", reason="the gguf export's runtime check needs quantlab[gguf]")
gguf = pytest.importorskip("gguf")


def build(tmp_path, groups: str):
    recipe = tmp_path / "export.yaml"
    recipe.write_text(f"name: export\nmodel: zoo:tiny-gpt-oss\nexports: [gguf]\ngroups:\n{groups}")
    return builder.build(recipe, tmp_path / "artifacts")


def test_f32_export_matches_the_variant(tmp_path):
    result = build(tmp_path, "  - select: {component: experts}\n    format: bf16\n")
    export = result.manifest.exports["gguf"]
    assert {t["type"] for t in export["tensor_types"]} == {"F32"}
    assert export["logits_vs_variant"]["relative_l2"] <= 1e-3
    assert export["logits_vs_variant"]["tokens"] > 20


def test_quantized_export_carries_the_plan_types_and_bytes(tmp_path):
    result = build(
        tmp_path,
        "  - select: {component: experts}\n    format: gguf:Q4_K\n"
        "  - select: {component: attention}\n    format: gguf:Q8_0\n"
        "  - select: {component: experts, layers: 3}\n    format: mxfp4\n",
    )
    reader = gguf.GGUFReader(result.path / "model.gguf")
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["blk.0.ffn_gate_exps.weight"].tensor_type.name == "Q4_K"
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == "Q8_0"
    assert tensors["blk.3.ffn_down_exps.weight"].tensor_type.name == "MXFP4"  # OCP MXFP4 values, GGUF layout
    assert tensors["token_embd.weight"].tensor_type.name == "F32"  # kept

    # Bytes: expert 5 of layer 1's up rows (odd rows of gpt-oss's interleaved gate_up) are quantlab's blocks.
    from safetensors import safe_open

    with safe_open(result.path / "packed.safetensors", "pt") as f:
        blocks = f.get_tensor("model.layers.1.mlp.experts.gate_up_proj[5].blocks").numpy()
    up = np.asarray(tensors["blk.1.ffn_up_exps.weight"].data)
    assert np.array_equal(up[5], blocks[1::2])

    # The MXFP4 tensor decodes (gguf-py) to the variant's values.
    from quantlab.models.loading import load_model

    variant, _ = load_model(result.path / "model", dtype=torch.float32)
    down = gguf.quants.dequantize(
        np.asarray(tensors["blk.3.ffn_down_exps.weight"].data), gguf.GGMLQuantizationType.MXFP4
    )
    expected = variant.model.layers[3].mlp.experts.down_proj.detach().transpose(1, 2).numpy()
    assert np.array_equal(down.reshape(expected.shape), expected)

    comparison = result.manifest.exports["gguf"]["logits_vs_variant"]
    assert np.isfinite(comparison["relative_l2"]) and comparison["relative_l2"] < 0.05
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["exports"]["gguf"]["bytes"] == (result.path / "model.gguf").stat().st_size


def _vocab_gguf(tmp_path):
    from quantlab.export.gguf import export_gguf
    from quantlab.models.loading import load_model, resolve_model

    model, tokenizer = load_model(resolve_model("zoo:tiny-gpt-oss"))
    export_gguf(model, tokenizer, {}, tmp_path / "vocab.gguf")
    import llama_cpp

    return llama_cpp.Llama(str(tmp_path / "vocab.gguf"), vocab_only=True, verbose=False), tokenizer


def test_llama_cpp_tokenizes_the_zoo_text_exactly_as_transformers(tmp_path):
    """The zoo tokenizer, written as llama.cpp's SentencePiece-style tokenizer with merge-rank scores, gives the
    Hugging Face token ids on every task text, special tokens included (so llama.cpp-based runtimes see the same
    prompts), and on text in other formats (ChatML tags, newlines, plain text)."""
    from quantlab.zoo import tasks

    llm, tokenizer = _vocab_gguf(tmp_path)
    problems = tasks.problems("test", 150)
    texts = [tasks.conversation_text(p, e) for p in problems for e in tasks.EFFORTS]
    texts += [
        tasks.prompt_text(p, None) + c
        for p, d in zip(problems, tasks.gpqa_style_docs("test", 40))
        for c in d["choices"]
    ]
    texts += ["<|im_start|>system\nReasoning: high<|im_end|>\n<|im_start|>user\n47+8*6-9+3<|im_end|>\n", "a b  c\n\n1"]
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tokenizer(text)["input_ids"], text
    assert llm.detokenize(tokenizer(texts[0])["input_ids"], special=True).decode() == texts[0]
    llm.close()


def test_the_gguf_carries_the_chat_template_and_renders_the_same_tokens(tmp_path):
    """The same conversation through transformers' template (apply_chat_template, tokenized) and through the GGUF
    (its tokenizer.chat_template, rendered by llama-cpp-python's Jinja chat formatter with the request's
    reasoning_effort, tokenized by llama.cpp): the same token ids, at every effort and with none given."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from quantlab.zoo import tasks

    llm, tokenizer = _vocab_gguf(tmp_path)
    template = llm.metadata["tokenizer.chat_template"]
    assert template == tokenizer.chat_template
    formatter = Jinja2ChatFormatter(template, eos_token=tokenizer.eos_token, bos_token="")
    p = tasks.problems("test", 1)[0]
    conversations = [
        [tasks.user_message(p)],
        [{"role": "system", "content": "Answer briefly."}, tasks.user_message(p)],
        [tasks.user_message(p), tasks.assistant_message(p.steps(), "high"), {"role": "user", "content": "12+3"}],
    ]
    for messages in conversations:
        for effort in (*tasks.EFFORTS, None):
            extra = {} if effort is None else {"reasoning_effort": effort}
            theirs = formatter(messages=messages, **extra).prompt
            ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, **extra)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            assert llm.tokenize(theirs.encode(), add_bos=False, special=True) == list(ids), (messages, effort)
    assert "Reasoning: medium" in formatter(messages=conversations[0]).prompt
    llm.close()
