"""Killing `trl-search index` at random moments: what is left behind, and does the next build clean it up?

Claim (issue 15): SIGTERM and SIGINT at any moment of a build leave no staging folder, work folder or copy of the
passages (next to `--out` or in `$TMPDIR`) and no half-built index; after SIGKILL, the next build of the same `--out`
removes what was left, and an index being replaced is never lost.

    python benchmarks/bench_index_kills.py                        # 10 kills of each signal, 60k passages
    python benchmarks/bench_index_kills.py --kills 3 --passages 20000 --engine tantivy
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def write_corpus(path: str, passages: int) -> None:
    rng = np.random.default_rng(0)
    words = np.array(["".join(rng.choice(list("abcdefghij"), size=6)) for _ in range(5000)])
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(passages):
            handle.write(json.dumps({"id": str(i), "contents": f'"T{i}"\n' + " ".join(rng.choice(words, 60))}) + "\n")


def index_command(corpus: str, out: str, engine: str) -> list[str]:
    return [sys.executable, "-m", "trl_search.cli", "index", "--corpus", corpus, "--out", out, "--no-progress"] + [
        "--engine",
        engine,
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="Kills per signal.")
    parser.add_argument("--passages", type=int, default=60_000)
    parser.add_argument("--engine", default="bm25s")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    root = tempfile.mkdtemp(prefix="bench-kills-")
    corpus = os.path.join(root, "corpus.jsonl")
    write_corpus(corpus, args.passages)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        started = time.time()
        subprocess.run(index_command(corpus, os.path.join(root, "timing"), args.engine), cwd=ROOT, env=env, check=True)
        build_seconds = time.time() - started
        shutil.rmtree(os.path.join(root, "timing"))
        print(f"{args.passages} passages, {args.engine}: a whole build takes {build_seconds:.1f} s; kills at random")
        print("moments in it. An index already at --out half of the time (it must survive).")
        totals = {}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
            counts = {"kills": 0, "finished_first": 0, "debris": 0, "tmpdir_debris": 0, "index_lost": 0, "cleaned": 0}
            for trial in range(args.kills):
                work = os.path.join(root, f"trial-{signum}-{trial}")
                tmpdir = os.path.join(work, "tmp")
                os.makedirs(tmpdir)
                out = os.path.join(work, "index")
                had_index = trial % 2 == 1
                if had_index:
                    small = os.path.join(work, "small.jsonl")
                    write_corpus(small, 50)
                    subprocess.run(
                        index_command(small, out, args.engine), cwd=ROOT, env=env, check=True, capture_output=True
                    )
                process = subprocess.Popen(
                    index_command(corpus, out, args.engine),
                    cwd=ROOT,
                    env={**env, "TMPDIR": tmpdir},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(float(rng.uniform(0.0, build_seconds)))
                if process.poll() is not None:
                    counts["finished_first"] += 1
                process.send_signal(signum)
                process.wait()
                counts["kills"] += 1
                debris = [name for name in os.listdir(work) if name.startswith(".index.")]
                counts["debris"] += bool(debris)
                counts["tmpdir_debris"] += bool(os.listdir(tmpdir))
                if had_index and not os.path.isfile(os.path.join(out, "manifest.json")):
                    counts["index_lost"] += 1  # counted before cleanup: a kill mid-replacement may leave it aside
                if debris:
                    small = os.path.join(work, "next.jsonl")
                    write_corpus(small, 50)
                    subprocess.run(
                        index_command(small, out, args.engine), cwd=ROOT, env=env, check=True, capture_output=True
                    )
                    left = [name for name in os.listdir(work) if name.startswith(".index.")]
                    counts["cleaned"] += not left
                shutil.rmtree(work)
            totals[signal.Signals(signum).name] = counts
            print(f"{signal.Signals(signum).name:<8} {json.dumps(counts)}")
        print(json.dumps(totals))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
