"""The step-wise Decoder: rows that join a running batch, or leave it, get the tokens they would get alone."""

import pytest
import torch

from lorakit.adapters import AdapterSpec, load_adapters, use_adapter
from lorakit.infer.decoder import Decoder, DecodeRow, Sampling

from conftest import ARCHITECTURES, make_model, make_tokenizer
from test_adapters import make_adapter

PROMPTS = ["hello there", "why?", "what is tea, really? tell me all about it", "ok"]


def lively(architecture: str = "llama"):
    """A tiny model with its weights scaled up, so different prompts get different greedy replies."""
    model = make_model(architecture, len(make_tokenizer()))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.mul_(10)
    return model.eval()


def alone(model, prompt_ids: list[int], count: int, adapter: str = "base") -> list[int]:
    """`count` greedy tokens from transformers' own `generate` on this prompt alone: no padding, no batch."""
    with torch.no_grad(), use_adapter(model, adapter):
        output = model.generate(torch.tensor([prompt_ids]), max_new_tokens=count, do_sample=False,
                                eos_token_id=None, pad_token_id=0)
    return output[0, len(prompt_ids):].tolist()


def run(decoder: Decoder, arrivals: dict[int, list[DecodeRow]], wanted: dict[DecodeRow, int]) -> dict:
    """Drive `decoder`: the rows of `arrivals[step]` join before that step; a row leaves once it has its
    `wanted` count of tokens. Returns each row's tokens and the steps taken."""
    got: dict[DecodeRow, list[int]] = {}
    step = 0
    while step <= max(arrivals) or decoder.rows:
        for row, pick in zip(arrivals.get(step, []), decoder.add(arrivals.get(step, []))):
            got[row] = [pick.token]
        for row, pick in zip(list(decoder.rows), decoder.step()):
            if len(got[row]) < wanted[row]:
                got[row].append(pick.token)
        decoder.drop([row for row in decoder.rows if len(got[row]) >= wanted[row]])
        step += 1
    return got


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_rows_that_join_and_leave_mid_generation_get_their_tokens_alone(architecture):
    tokenizer = make_tokenizer()
    model = lively(architecture)
    prompts = [tokenizer(text)["input_ids"] for text in PROMPTS]
    rows = [DecodeRow(ids) for ids in prompts]
    wanted = dict(zip(rows, [12, 4, 10, 6]))

    got = run(Decoder(model, tokenizer.pad_token_id), {0: [rows[0]], 2: [rows[1], rows[2]], 5: [rows[3]]}, wanted)

    expected = [alone(model, ids, wanted[row]) for ids, row in zip(prompts, rows)]
    assert len({tuple(tokens) for tokens in expected}) == len(rows)  # distinct replies: mixed-up rows would show
    assert [got[row] for row in rows] == expected


def test_a_sliding_window_model_past_its_window_still_matches():
    tokenizer = make_tokenizer()
    model = lively("gemma3")  # sliding window 64 tokens
    prompts = [tokenizer("tea! " * 12)["input_ids"], tokenizer("why?")["input_ids"]]
    rows = [DecodeRow(ids) for ids in prompts]
    wanted = dict(zip(rows, [20, 8]))

    got = run(Decoder(model, tokenizer.pad_token_id), {0: [rows[0]], 3: [rows[1]]}, wanted)

    assert [got[row] for row in rows] == [alone(model, ids, wanted[row]) for ids, row in zip(prompts, rows)]


def test_each_row_keeps_its_adapter(tmp_path):
    tokenizer = make_tokenizer()
    model = load_adapters(lively(), [AdapterSpec("tuned", make_adapter(tmp_path / "tuned", seed=3, scale=8.0))],
                          "tiny")
    ids = tokenizer("hello there")["input_ids"]
    rows = [DecodeRow(ids, adapter="tuned"), DecodeRow(ids, adapter="base"), DecodeRow(ids, adapter="tuned")]
    wanted = dict(zip(rows, [10, 10, 4]))

    got = run(Decoder(model, tokenizer.pad_token_id), {0: [rows[0]], 2: [rows[1]], 3: [rows[2]]}, wanted)

    tuned, base = alone(model, ids, 10, "tuned"), alone(model, ids, 10)
    assert tuned != base
    assert [got[row] for row in rows] == [tuned, base, tuned[:4]]


def test_dropping_the_longest_row_frees_its_columns():
    tokenizer = make_tokenizer()
    decoder = Decoder(lively(), tokenizer.pad_token_id)
    long, short = DecodeRow(tokenizer("a long prompt, much longer")["input_ids"]), DecodeRow([5, 6])
    decoder.add([long, short])
    decoder.step()
    assert decoder.cache_length == len(long.prompt_ids) + 1

    decoder.drop([long])

    assert decoder.rows == [short] and decoder.cache_length == len(short.prompt_ids) + 1
    decoder.drop([short])
    assert decoder.rows == [] and decoder.cache_length == 0


def test_seeded_sampling_repeats_whatever_shares_the_batch_and_top_k_1_is_greedy():
    tokenizer = make_tokenizer()
    model = lively()
    ids = tokenizer("hello")["input_ids"]

    def sampled(seed: int, company: int, **options) -> list[int]:
        rows = [DecodeRow(ids, Sampling(temperature=1.0, seed=seed, **options))]
        others = [DecodeRow(tokenizer("other" * (n + 1))["input_ids"], Sampling(temperature=1.0))
                  for n in range(company)]
        wanted = {row: 12 for row in rows + others}
        return run(Decoder(model, tokenizer.pad_token_id), {0: others, 1: rows}, wanted)[rows[0]]

    assert sampled(7, company=0) == sampled(7, company=3) != sampled(8, company=0)
    assert sampled(8, company=2, top_k=1) == alone(model, ids, 12)


def test_logprobs_are_the_models_own_for_each_picked_token():
    tokenizer = make_tokenizer()
    model = lively()
    ids = tokenizer("hello")["input_ids"]
    decoder = Decoder(model, tokenizer.pad_token_id)
    decoder.add([DecodeRow(tokenizer("a longer neighbour")["input_ids"])])
    row = DecodeRow(ids, logprobs=3)

    picks = decoder.add([row]) + [decoder.step()[1] for _ in range(5)]

    tokens = [pick.token for pick in picks]
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([ids + tokens])).logits[0].float(), dim=-1)
    for position, pick in enumerate(picks):
        scores = expected[len(ids) - 1 + position]
        assert pick.logprob.logprob == pytest.approx(float(scores[pick.token]), abs=1e-4)
        assert [value for _, value in pick.logprob.top] == pytest.approx(scores.topk(3).values.tolist(), abs=1e-4)
        assert pick.logprob.top[0][0] == pick.token  # greedy: the picked token is the likeliest
