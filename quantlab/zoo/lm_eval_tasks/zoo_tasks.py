"""Datasets and the answer filter of the bundled tasks: the reference model's AIME-style and GPQA-style problems
(quantlab.zoo.tasks), built in memory for lm-eval's ``custom_dataset`` (no files, no hub)."""

import datasets

from quantlab.zoo.score import final_answer
from quantlab.zoo.tasks import aime_style_docs, gpqa_style_docs


def aime_style(split="test", count=500, seed=0, **unused):
    docs = aime_style_docs(split, int(count), int(seed))
    return {"test": datasets.Dataset.from_list([{"question": d["question"], "answer": str(d["answer"])} for d in docs])}


def gpqa_style(split="test", count=500, seed=0, **unused):
    docs = gpqa_style_docs(split, int(count), int(seed))
    return {
        "test": datasets.Dataset.from_list(
            [{"question": d["question"], "choices": d["choices"], "answer": d["answer"]} for d in docs]
        )
    }


def final_channel_answers(resps, docs):
    """Each response's final-channel integer as text ("[invalid]" where it gives none), as the model is scored."""

    def answer(response):
        value = final_answer(response)
        return "[invalid]" if value is None else str(value)

    return [[answer(r) for r in responses] for responses in resps]
