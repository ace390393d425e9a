"""How a server is spoken to, apart from how it is started (``quantlab.runtimes.engines``): the request it answers
prompt log-probabilities in, and the request fields that keep it faithful. A served engine names the protocol of
its server; an endpoint of unknown make is asked in vLLM's (``UNKNOWN_ENDPOINT``), which SGLang's servers take too.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from quantlab.errors import UserError
from quantlab.registry import Registered

UNKNOWN_ENDPOINT = "vllm"  # the protocol an endpoint someone else runs is asked in


class Protocol(Registered):
    kind: ClassVar[str] = "server protocol"
    _entries: ClassVar[dict[str, Registered]] = {}
    prompt_logprobs_by_token_id: ClassVar[bool] = True  # its prompt log-probabilities name token ids
    # Request fields a faithful client sends (where the server's defaults depart from the model's own sampling).
    request_defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def prompt_logprobs(self, server, ids: list[int], top_k: int) -> list[dict[int, float]]:
        """Per position 1..n-1 of the prompt ``ids``: the served log-probabilities (token id -> value) of the top
        ``top_k`` tokens and of the prompt's own next token, as the server returns them. ``server``: anything
        with ``post(route, payload)`` and ``model`` (a ``serve.Server``, an ``OpenAIClient``)."""
        raise UserError(f"{self.name}'s server returns no prompt log-probabilities by token id")

    def generate(
        self, server, prompt: str, limit: int, stops: list[int], temperature: float, top_p: float, seed: int
    ) -> tuple[str, int, bool]:
        """``Session.generate`` for one prompt: the continuation until a token of ``stops`` or ``limit`` tokens
        (its text with special tokens kept, without the stop token; the tokens it took, the stop token not
        counted; whether it stopped at a stop token)."""
        raise UserError(f"{self.name}'s server cannot be asked to stop at given token ids")


def get_protocol(name: str) -> Protocol:
    return Protocol.lookup(name)


class VLLMCompletions(Protocol, name="vllm"):
    def prompt_logprobs(self, server, ids, top_k):
        # vLLM's extension of the completions API: prompt_logprobs=k returns, for every prompt position after
        # the first, the top k tokens and the prompt's own token, keyed by token id
        answer = server.post(
            "completions",
            {"model": server.model, "prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": top_k},
        )
        positions = answer["choices"][0].get("prompt_logprobs")
        if not positions or len(positions) != len(ids):
            raise UserError(f"vllm server: no prompt_logprobs for a prompt of {len(ids)} tokens")
        return [
            {int(token): float(entry["logprob"]) for token, entry in position.items()} for position in positions[1:]
        ]

    def generate(self, server, prompt, limit, stops, temperature, top_p, seed):
        # vLLM's extensions of the completions API: stop at exactly these ids (ignore_eos drops the EOS and the
        # generation config's extra EOS ids, which the caller lists in ``stops`` where it wants them), keep
        # special tokens in the text without the spaces vLLM puts between them by default, and tokenize the
        # prompt as given (no BOS added), as the other sessions do
        answer = server.post(
            "completions",
            {
                "model": server.model,
                "prompt": prompt,
                "max_tokens": limit,
                "temperature": temperature,
                "top_p": top_p,
                "seed": seed,
                "stop_token_ids": list(stops),
                "ignore_eos": True,
                "skip_special_tokens": False,
                "spaces_between_special_tokens": False,
                "add_special_tokens": False,
            },
        )
        try:
            choice, used = answer["choices"][0], int(answer["usage"]["completion_tokens"])
            text = choice["text"]
        except (KeyError, IndexError, TypeError, ValueError):
            raise UserError("vllm server: a completion without choices[0].text and usage.completion_tokens") from None
        # vLLM leaves the stop token's text out (include_stop_str_in_output is off) but counts the token
        stopped = choice.get("finish_reason") == "stop" and choice.get("stop_reason") in stops
        return text, used - stopped, stopped


class LlamaCppServer(Protocol, name="llama.cpp"):
    # llama-cpp-python's server returns prompt log-probabilities keyed by token text (control tokens all decode
    # to ""), not by id
    prompt_logprobs_by_token_id = False
    # its completions route stops at strings only, and control tokens detokenize to "": a stop by id cannot be
    # asked (Protocol.generate refuses)
    # it applies repeat_penalty 1.1 unless the request says otherwise, which changes greedy answers, and samples
    # from the top 40 tokens above 5% of the top one's probability (top_k 40, min_p 0.05), which narrows sampled
    # ones; the model's own sampling has none of them (0 turns top_k and min_p off in llama.cpp's sampler)
    request_defaults = MappingProxyType({"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0})
