"""Datasets of the bundled tasks: the reference model's AIME-style and GPQA-style problems (quantlab.zoo.tasks),
built in memory for lm-eval's ``custom_dataset`` (no files, no hub)."""

import datasets


def aime_style(effort="high", split="test", count=500, seed=0, **unused):
    from quantlab.zoo.tasks import aime_style_docs

    docs = aime_style_docs(split, int(count), int(seed), effort)
    return {"test": datasets.Dataset.from_list([{"question": d["question"], "answer": str(d["answer"])} for d in docs])}


def gpqa_style(effort="high", split="test", count=500, seed=0, **unused):
    from quantlab.zoo.tasks import gpqa_style_docs

    docs = gpqa_style_docs(split, int(count), int(seed), effort)
    return {
        "test": datasets.Dataset.from_list(
            [{"question": d["question"], "choices": d["choices"], "answer": d["answer"]} for d in docs]
        )
    }
