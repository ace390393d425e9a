"""lm-eval requests answered by llama.cpp running a variant's GGUF export: the runtime users of Ollama / LM
Studio get.

Prompts are tokenized by the variant's Hugging Face tokenizer and the token ids are handed to llama.cpp, so the
comparison with the ``hf`` runtime isolates the runtime (its kernels and its arithmetic) from tokenization.
Generation is greedy or sampled with llama.cpp's own sampler (seeded); log-likelihoods come from its logits.
"""

from __future__ import annotations

import numpy as np
from lm_eval.api.model import LM

from quantlab.runtimes.llama_cpp import logits, open_gguf
from quantlab.runtimes.prompts import render_chat


class LlamaCppLM(LM):
    def __init__(
        self,
        gguf_path,
        tokenizer,
        n_ctx: int,
        seed: int = 0,
        temperature: float = 0.0,
        top_p: float = 1.0,
        chat_template: str | None = None,
        chat_template_args: dict | None = None,
    ):
        super().__init__()
        self.llm = open_gguf(gguf_path, n_ctx, seed=seed)
        self.tokenizer, self.n_ctx, self.temperature, self.top_p = tokenizer, n_ctx, temperature, top_p
        self.template, self.template_args = chat_template, dict(chat_template_args or {})

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "tokenizer"))

    def chat_template(self, chat_template=False) -> str | None:
        return self.template

    def apply_chat_template(self, chat_history, add_generation_prompt=True) -> str:
        """The conversation rendered with the evaluation's template (the one written into the GGUF, or the wrong
        one asked for), as the hf runtime renders it."""
        return render_chat(self.tokenizer, self.template, self.template_args, chat_history, add_generation_prompt)

    def _logprobs(self, ids: list[int]) -> np.ndarray:
        """Log-softmax of llama.cpp's logits at every position of ``ids``."""
        values = logits(self.llm, ids).astype(np.float64)
        values -= values.max(axis=-1, keepdims=True)
        return values - np.log(np.exp(values).sum(axis=-1, keepdims=True))

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        results = []
        for request in requests:
            context, continuation = request.args
            context_ids = self.tokenizer(context)["input_ids"]
            full = self.tokenizer(context + continuation)["input_ids"]
            whole = full[-self.n_ctx :]
            start = max(1, len(whole) - (len(full) - len(context_ids)))  # the first continuation token
            logprobs = self._logprobs(whole)
            targets = whole[start:]
            picked = logprobs[np.arange(start - 1, len(whole) - 1), targets]
            greedy = bool((logprobs[start - 1 : len(whole) - 1].argmax(axis=-1) == np.array(targets)).all())
            results.append((float(picked.sum()), greedy))
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        results = []
        for request in requests:
            ids = self.tokenizer(request.args[0])["input_ids"][-self.n_ctx :]
            logprobs = self._logprobs(ids)
            results.append(float(logprobs[np.arange(len(ids) - 1), ids[1:]].sum()))
        return results

    def generate_until(self, requests) -> list[str]:
        outputs = []
        for request in requests:
            context, kwargs = request.args
            until = [u for u in kwargs.get("until", []) if u]
            max_new = int(kwargs.get("max_gen_toks", 256))
            ids = self.tokenizer(context)["input_ids"][-(self.n_ctx - max_new) :]
            self.llm.reset()
            generated: list[int] = []
            temperature = float(kwargs.get("temperature", self.temperature)) if kwargs.get("do_sample") else 0.0
            # llama-cpp-python's generate cuts sampling by top_k 40 and min_p 0.05 unless told otherwise: the
            # model's own sampling has neither
            top_p = float(kwargs.get("top_p", self.top_p))
            for token in self.llm.generate(ids, temp=temperature, top_p=top_p, top_k=0, min_p=0.0, reset=True):
                if token == self.llm.token_eos() or token == self.tokenizer.eos_token_id or len(generated) >= max_new:
                    break
                generated.append(token)
                text = self.tokenizer.decode(generated)
                if any(stop in text for stop in until):
                    break
            text = self.tokenizer.decode(generated)
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
        return outputs
