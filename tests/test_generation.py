"""The transformers generation backend: real `generate`, real stop strings, per-row limits."""

import torch
from transformers import GenerationConfig, LogitsProcessor

from trl_search.generation import TransformersGenerator

from .scripted import script_model_forward


STOPS = ("</search>", "</answer>")


def make_generator(model, tokenizer):
    config = GenerationConfig(do_sample=False, max_new_tokens=64, pad_token_id=tokenizer.pad_token_id)
    return TransformersGenerator(model, tokenizer, config, eos_token_ids=[tokenizer.eos_token_id])


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_generation_stops_exactly_at_the_tag(tiny_model, tiny_tokenizer):
    scripts = {
        "[s0]": [["<think> look </think> <search> capital of Veldoria </search>"]],
        "[s1]": [["<answer> Quarnel </answer>"]],
        "[s2]": [["just words without any tag at all"]],
    }
    script_model_forward(tiny_model, tiny_tokenizer, scripts)
    generator = make_generator(tiny_model, tiny_tokenizer)
    contexts = [
        encode(tiny_tokenizer, f"Question {marker}: longer prompt here" * (i + 1)) for i, marker in enumerate(scripts)
    ]

    turns = generator.generate(contexts, [64, 64, 5], STOPS)

    assert turns[0].token_ids == encode(tiny_tokenizer, scripts["[s0]"][0][0])  # not one filler token more
    assert turns[0].stopped
    assert turns[1].token_ids == encode(tiny_tokenizer, scripts["[s1]"][0][0])
    assert turns[1].stopped
    assert turns[2].token_ids == encode(tiny_tokenizer, scripts["[s2]"][0][0])[:5]  # its own limit, not the batch's
    assert not turns[2].stopped


def test_generation_stops_at_eos_and_keeps_it(tiny_model, tiny_tokenizer):
    script_model_forward(tiny_model, tiny_tokenizer, {"[s0]": [["no idea<EOS>"]]})
    generator = make_generator(tiny_model, tiny_tokenizer)
    (turn,) = generator.generate([encode(tiny_tokenizer, "Question [s0]: x")], [16], STOPS)
    assert turn.token_ids == encode(tiny_tokenizer, "no idea") + [tiny_tokenizer.eos_token_id] and turn.stopped


def test_empty_batch_generates_nothing(tiny_model, tiny_tokenizer):
    assert make_generator(tiny_model, tiny_tokenizer).generate([], [], STOPS) == []


def _multi_turn(generator, model, tokenizer, seed=0):
    """Four turns over rows of different lengths: a row drops out after turn 1 and observations differ in length,
    as in a rollout. Returns each turn's tokens and the width each call's prefill fed to the model."""
    torch.manual_seed(seed)
    prefill_widths, inner = [], model.forward

    def forward(*args, **kwargs):
        if kwargs["input_ids"].shape[1] > 1 or not prefill_widths or prefill_widths[-1] is None:
            prefill_widths.append(kwargs["input_ids"].shape[1])
        return inner(*args, **kwargs)

    model.forward = forward
    contexts = [[5 + (i * 7 + j) % 300 for j in range(n)] for i, n in enumerate((40, 25, 33, 60))]
    outputs = []
    try:
        for turn in range(4):
            prefill_widths.append(None)  # marks a new call: its first forward is the prefill
            turns = generator.generate(contexts, [10 + 3 * i for i in range(len(contexts))], STOPS)
            outputs.append([t.token_ids for t in turns])
            contexts = [
                ids + t.token_ids + [7 + (i + turn) % 50] * (3 + 4 * i)
                for i, (ids, t) in enumerate(zip(contexts, turns))
                if not (turn == 1 and i == 1)
            ]
    finally:
        del model.forward
    widths = [w for previous, w in zip(prefill_widths, prefill_widths[1:]) if previous is None]
    return outputs, widths


def test_cache_reuse_gives_the_same_tokens_and_prefills_only_new_ones(tiny_model, tiny_tokenizer):
    tiny_model.eval()
    config = GenerationConfig(do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id)
    fresh = TransformersGenerator(tiny_model, tiny_tokenizer, config, reuse_cache=False)
    reusing = TransformersGenerator(tiny_model, tiny_tokenizer, config, reuse_cache=True)
    expected, full_widths = _multi_turn(fresh, tiny_model, tiny_tokenizer)
    got, reused_widths = _multi_turn(reusing, tiny_model, tiny_tokenizer)
    assert got == expected
    assert reused_widths[0] == full_widths[0]  # the first turn has nothing to reuse
    for reused, full in zip(reused_widths[1:], full_widths[1:]):
        assert reused < full / 2, (reused_widths, full_widths)


def test_cache_reuse_gives_the_same_logits_to_rounding(tiny_model, tiny_tokenizer):
    """Sampling draws from the same distribution: logits differ only by float rounding of other matrix shapes (so a
    draw that lands on a boundary between two tokens may differ; greedy decoding is identical, above)."""
    tiny_model.eval()
    recorded = {}

    class Recorder(LogitsProcessor):
        def __call__(self, input_ids, scores):
            recorded.setdefault(self.key, []).append(scores.clone())
            return scores

    inner = tiny_model.generate
    for reuse in (False, True):
        recorder = Recorder()
        recorder.key = reuse
        tiny_model.generate = lambda recorder=recorder, **kwargs: inner(**kwargs, logits_processor=[recorder])
        config = GenerationConfig(do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id)
        _multi_turn(TransformersGenerator(tiny_model, tiny_tokenizer, config, reuse_cache=reuse), tiny_model, None)
    del tiny_model.generate
    assert len(recorded[False]) == len(recorded[True])
    difference = max((a - b).abs().max().item() for a, b in zip(recorded[False], recorded[True]))
    assert difference < 1e-5  # a row whose tokens moved without their positions differs by ~1e-3 here


def test_cache_is_not_reused_across_rollouts(tiny_model, tiny_tokenizer):
    tiny_model.eval()
    config = GenerationConfig(do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id)
    generator = TransformersGenerator(tiny_model, tiny_tokenizer, config)
    prompt = [[5 + j for j in range(12)]]
    (first,) = generator.generate(prompt, [1], STOPS)
    # One generated token: the cache holds exactly the prompt, which a new rollout's identical prompt extends.
    assert generator._cached_rows and generator._cached_rows[0].cached == len(prompt[0])
    generator.model = tiny_model  # the trainer assigns the model at every rollout: weights may have changed
    assert generator._cache is None
    generator.generate(prompt, [1], STOPS)
    generator.release()
    assert generator._cache is None and not generator._cached_rows


def test_contexts_that_extend_no_cached_row_are_prefilled_whole(tiny_model, tiny_tokenizer):
    tiny_model.eval()
    config = GenerationConfig(do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id)
    generator = TransformersGenerator(tiny_model, tiny_tokenizer, config)
    generator.generate([[5 + j for j in range(20)]], [4], STOPS)
    other = [[9 + j % 7 for j in range(30)]]
    assert generator._reusable_cache(other, 30) is None
    expected = TransformersGenerator(tiny_model, tiny_tokenizer, config, reuse_cache=False).generate(other, [6], STOPS)
    assert generator.generate(other, [6], STOPS) == expected
