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


class LlamaCppServer(Protocol, name="llama.cpp"):
    # llama-cpp-python's server returns prompt log-probabilities keyed by token text (control tokens all decode
    # to ""), not by id
    prompt_logprobs_by_token_id = False
    # it applies repeat_penalty 1.1 unless the request says otherwise, which changes greedy answers; the model's
    # own sampling has none
    request_defaults = MappingProxyType({"repeat_penalty": 1.0})
