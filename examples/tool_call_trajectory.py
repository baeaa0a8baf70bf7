# Shows what a chat model sees and trains on with search_protocol="tool_call": one two-search trajectory, rendered by
# one of TRL's chat templates, each span marked as sampled (mask 1, trained) or injected (mask 0). Offline: a tiny
# tokenizer carries the real template, and the policy's turns are scripted.
#
#   python examples/tool_call_trajectory.py --family qwen2_5      # or qwen3, llama3_1
"""Print a rendered two-search tool-call trajectory with its mask."""

import argparse
import json

from trl_search.offline_models import CHAT_FAMILIES, build_chat_tokenizer, offline_environment


offline_environment()  # before transformers is imported

from trl_search.generation import GeneratedTurn  # noqa: E402
from trl_search.retrievers import BM25Retriever  # noqa: E402
from trl_search.rollout import SearchRollout  # noqa: E402


CORPUS = [
    {"id": "0", "contents": '"Merlow"\nThe Merlow is a river of Veldoria.'},
    {"id": "1", "contents": '"Veldoria"\nVeldoria is a country whose capital is Quarnel.'},
]


def turns_for(family: str) -> list[str]:
    def call(query):
        if family == "llama3_1":
            return json.dumps({"name": "search", "parameters": {"query": query}}) + "<|eot_id|>"
        think = "<think>\nI need to look this up.\n</think>\n\n" if family == "qwen3" else ""
        return f"{think}<tool_call>\n{json.dumps({'name': 'search', 'arguments': {'query': query}})}\n</tool_call><|im_end|>"

    end = "<|eot_id|>" if family == "llama3_1" else "<|im_end|>"
    return [call("river Merlow"), call("capital of Veldoria"), f"Quarnel{end}"]


class Script:
    """Replays fixed turns, one per call."""

    def __init__(self, tokenizer, turns):
        self.tokenizer, self.turns, self.eos_token_ids = tokenizer, list(turns), [tokenizer.eos_token_id]

    def generate(self, contexts, max_new_tokens, stop_strings):
        ids = self.tokenizer(self.turns.pop(0), add_special_tokens=False)["input_ids"]
        return [GeneratedTurn(token_ids=ids, stopped=True)]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", choices=sorted(CHAT_FAMILIES), default="qwen2_5")
    family = parser.parse_args().family
    tokenizer = build_chat_tokenizer([row["contents"] for row in CORPUS] * 4, family, vocab_size=500)
    rollout = SearchRollout(
        BM25Retriever.build(CORPUS, backend="numpy"), tokenizer, protocol="tool_call", retrieval_top_k=1
    )
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of the land whose river is the Merlow?"}],
        tools=rollout.protocol.tools,
        chat_template=rollout.protocol.chat_template,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    (sample,) = rollout.run([prompt], Script(tokenizer, turns_for(family))).samples
    print(f"# {family}: {sample.num_searches} searches {sample.queries}, answer {sample.predicted_answer!r}")
    spans, start = [], 0
    for index in range(1, len(sample.env_mask) + 1):  # consecutive tokens with the same mask
        if index == len(sample.env_mask) or sample.env_mask[index] != sample.env_mask[start]:
            spans.append((sample.env_mask[start], sample.completion_ids[start:index]))
            start = index
    for mask, ids in spans:
        print(f"--- mask {mask} ({'sampled, trained' if mask else 'injected, masked'}), {len(ids)} tokens")
        print(tokenizer.decode(ids, skip_special_tokens=False))


if __name__ == "__main__":
    main()
