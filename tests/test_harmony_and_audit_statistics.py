"""The pieces of the audit with hand-computed answers: a harmony turn split into channels, and the tests the
checks run (exact binomial, its power, Wilcoxon, the MMD permutation test of Model Equality Testing)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantlab import statistics
from quantlab.chat import harmony


def test_a_turn_splits_into_its_analysis_and_final_channels():
    text = (
        "<|channel|>analysis<|message|>47+48-9+3=95-9+3<|end|><|start|>assistant<|channel|>final<|message|>89<|return|>"
    )
    turn = harmony.split_turn(text)
    assert (turn.reasoning, turn.final, turn.has_final) == ("47+48-9+3=95-9+3", "89", True)


def test_a_turn_cut_in_its_analysis_has_no_final_and_goes_on_only_when_it_stopped_at_the_message_end():
    turn = harmony.split_turn("<|channel|>analysis<|message|>47+48")
    assert (turn.reasoning, turn.final, turn.has_final) == ("47+48", "", False)
    assert harmony.turn_goes_on("<|channel|>analysis<|message|>47+48", stopped=True)
    assert not harmony.turn_goes_on("<|channel|>analysis<|message|>47+48", stopped=False)  # the token limit
    assert not harmony.turn_goes_on("<|channel|>final<|message|>89", stopped=True)


def test_text_without_channels_is_all_final():
    # a prompt that opened the final channel itself, or a template that is not harmony's
    assert harmony.split_turn(" 89<|return|>") == harmony.Turn("", "89", True)
    assert harmony.split_turn("43=36") == harmony.Turn("", "43=36", True)


def test_excess_rate_test_is_the_binomial_upper_tail_by_hand():
    # P(X >= 3) for X ~ Binomial(10, 0.05), summed by hand
    by_hand = sum(math.comb(10, k) * 0.05**k * 0.95 ** (10 - k) for k in range(3, 11))
    assert statistics.excess_rate_test(3, 10, 0.05) == pytest.approx(by_hand, rel=1e-12)
    assert statistics.excess_rate_test(0, 10, 0.05) == pytest.approx(1.0)
    assert statistics.excess_rate_test(0, 0, 0.05) == 1.0


def test_exceedance_p_value_counts_the_orderings_by_hand():
    from itertools import permutations

    # 3 calibration values (c) and 2 new ones (n), every ordering equally likely: the share of orderings with both
    # new values above the largest calibration value, and with at least one above the 2nd largest
    orderings = set(permutations("cccnn"))
    both_above_max = sum(o[:2] == ("n", "n") for o in orderings) / len(orderings)
    one_above_second = sum("n" in o[:2] for o in orderings) / len(orderings)
    assert statistics.exceedance_p_value(2, 2, 3, 1) == pytest.approx(both_above_max)  # 1/10
    assert statistics.exceedance_p_value(1, 2, 3, 2) == pytest.approx(one_above_second)  # 7/10
    assert statistics.exceedance_p_value(0, 2, 3, 1) == 1.0


def test_detectable_rate_has_80_percent_power_and_nothing_smaller_does():
    n, null, alpha = 24, 0.01, 0.05
    rate = statistics.detectable_rate(n, null, alpha)
    # the critical count by hand: the smallest k whose upper tail under the null is below alpha
    tail = lambda k, p: sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))  # noqa: E731
    critical = next(k for k in range(n + 1) if tail(k, null) < alpha)
    assert tail(critical, rate) == pytest.approx(0.8, abs=1e-6)
    assert tail(critical, rate - 0.01) < 0.8
    assert statistics.detectable_rate(1, 0.5, 0.05) is None  # one trial at a 50% null never rejects at 5%


def test_signed_rank_p_matches_the_exact_distribution_by_hand():
    # five positive differences, all ranks positive: 1 of 32 sign patterns, two-sided: 2/32
    assert statistics.signed_rank_p(np.array([1.0, 2, 3, 4, 5])) == pytest.approx(2 / 32)
    assert statistics.signed_rank_p(np.zeros(7)) == 1.0


def test_hamming_kernel_counts_agreeing_characters():
    kernel = statistics.hamming_kernel(["abcd", "ab"], ["abcd", "abxx"], 4)
    # "ab" is padded with a character no text holds: it agrees with "abcd" on 2 of 4 places
    assert kernel.tolist() == [[1.0, 0.5], [0.5, 0.5]]


def test_mmd_of_a_tiny_sample_by_hand_and_its_permutation_p_value():
    first, second = [["a", "a"]], [["b", "b"]]
    mmd, p = statistics.mmd_permutation_test(first, second, permutations=200, seed=0)
    # k(a,a) = k(b,b) = 1, k(a,b) = 0: within-sample terms 1 + 1, cross term 2 * 0
    assert mmd == pytest.approx(2.0)
    # 6 ways to split {a, a, b, b} in two; only the 2 pure splits reach MMD 2: p near 1/3
    assert 0.2 < p < 0.5
    same, p_same = statistics.mmd_permutation_test([["x", "y", "x"]], [["x", "y", "x"]], permutations=200, seed=0)
    assert p_same > 0.3


def test_mmd_test_rejects_two_clearly_different_samplers_and_keeps_its_level_on_equal_ones():
    rng = np.random.default_rng(0)
    words = ["89", "91", "87", "93"]
    sample = lambda probs, n: [list(rng.choice(words, size=n, p=probs)) for _ in range(4)]  # noqa: E731
    _, p_different = statistics.mmd_permutation_test(
        sample([0.97, 0.01, 0.01, 0.01], 8), sample([0.25, 0.25, 0.25, 0.25], 8), permutations=300, seed=1
    )
    assert p_different < 0.01
    rejections = sum(
        statistics.mmd_permutation_test(sample([0.4, 0.3, 0.2, 0.1], 6), sample([0.4, 0.3, 0.2, 0.1], 6), 100, s)[1]
        < 0.05
        for s in range(40)
    )
    assert rejections <= 6  # 5% of 40 is 2; 6 leaves room for chance (P(X >= 7) < 0.5% at the nominal level)


def test_a_call_is_read_from_either_header_placement_and_ends_the_turn():
    # openai-harmony 0.0.8 puts the recipient in the role part; the model may also write it after the channel
    # (as gpt-oss generates, and vLLM's harmony fork renders)
    role_part = ' to=functions.calculator<|channel|>commentary <|constrain|>json<|message|>{"expression": "1+2"}'
    channel_part = (
        '<|channel|>commentary to=functions.calculator <|constrain|>json<|message|>{"expression": "1+2"}<|call|>'
    )
    for text in (role_part, channel_part):
        turn = harmony.split_turn(text)
        assert turn.tool_calls == (harmony.ToolCall("functions.calculator", "json", '{"expression": "1+2"}'),)
        assert turn.tool_calls[0].function == "calculator"
        assert (turn.final, turn.has_final) == ("", False)
        assert not harmony.turn_goes_on(text, stopped=True)  # the tool answers next, not the assistant
    # gpt-oss's Hugging Face template writes "commentary json" without <|constrain|>
    hf = harmony.split_turn(' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}')
    assert hf.tool_calls[0].content_type == "json" and hf.tool_calls[0].function == "get_weather"


def test_an_analysis_before_a_call_stays_reasoning():
    text = (
        "<|channel|>analysis<|message|>use the tool<|end|><|start|>assistant to=functions.calculator<|channel|>"
        'commentary <|constrain|>json<|message|>{"expression": "2*3"}'
    )
    turn = harmony.split_turn(text)
    assert turn.reasoning == "use the tool" and turn.tool_calls[0].arguments == '{"expression": "2*3"}'


def test_the_audit_level_is_shared_among_its_statistical_checks():
    from quantlab.stages.audit.run import CHECKS, family_wise_level

    # every check but shape (pass or fail case by case) tests at a level
    tests = [name for name in CHECKS if name != "shape"]
    assert family_wise_level(0.05, list(CHECKS)) == pytest.approx(0.05 / len(tests))
    assert family_wise_level(0.05, ["weights", "shape"]) == pytest.approx(0.05)
    assert family_wise_level(0.05, ["shape"]) == pytest.approx(0.05)


def test_a_token_left_out_of_a_servers_listing_is_restored_from_its_text_with_no_distribution():
    """llama-cpp-python lists every generated token but the GGUF's BOS (here <|start|>, which opens each later
    message): the ids must still be the turn's own tokens, as the checkpoint's tokenizer splits its text, and
    the left-out position must count in no KL."""
    from quantlab.stages.audit.calibration import tokens_and_served
    from quantlab.stages.audit.client import CompletionAnswer
    from quantlab.stages.audit.local import LocalModel
    from quantlab.zoo import SHIPPED_CHECKPOINT

    model = LocalModel("reference", SHIPPED_CHECKPOINT)
    text = "<|channel|>final<|message|>7<|end|><|start|>assistant"
    listed = ["<|channel|>", "final", "<|message|>", "7", "<|end|>", "assistant"]
    answer = CompletionAnswer(text, "length", listed, [{token: -0.5} for token in listed], {})
    ids, served = tokens_and_served(model, answer)
    assert ids == model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [bool(top) for top in served] == [True] * 5 + [False, True]
    # a text that disagrees with the listing otherwise (an endpoint that drops the markers from its text): the
    # listing is trusted, as it was before
    dropped = CompletionAnswer("final7assistant", "length", listed, answer.top_logprobs, {})
    ids, served = tokens_and_served(model, dropped)
    assert ids == [model.token_ids_by_text[token] for token in listed] and all(served)
