"""The transformers generation backend: real `generate`, real stop strings, per-row limits."""

from transformers import GenerationConfig

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
