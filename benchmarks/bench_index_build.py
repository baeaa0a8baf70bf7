"""`trl-search index` end to end (read, validate, store, index, save): wall time and peak memory, side by side.

Claim (issue 15): building a BM25 index costs at most what Lucene's does (Search-R1's builder: 26 s and 0.6 GB for
500k passages, 1 thread, as measured in the issue; Lucene is not installed here, so it is not re-run) and the query
speed is kept (benchmarks/bench_bm25.py).

Each build runs `python -m trl_search.cli index` in its own process, one core; peak memory is that process's
(ru_maxrss from wait4); CPU seconds (user + system, from wait4) are reported next to wall time because on a
shared machine they depend less on what else runs. `--before DIR` adds a column for another checkout's package (e.g. an export of an earlier
commit: `git archive COMMIT trl_search | tar -x -C DIR`), run on the same corpus in the same run.

    python benchmarks/bench_index_build.py --passages 200000
    python benchmarks/bench_index_build.py --passages 200000 --before /tmp/before --repeats 2
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def build(root: str, corpus: str, out: str, engine: str) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak MB) of one `trl-search index` run with the package at `root`."""
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    command = ["taskset", "-c", str(sorted(os.sched_getaffinity(0))[0]), sys.executable, "-m", "trl_search.cli"]
    command += ["index", "--corpus", corpus, "--out", out, "--engine", engine, "--no-progress"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"build with {root} failed: {process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=200_000)
    parser.add_argument("--engine", default="bm25s")
    parser.add_argument("--before", help="a directory holding another trl_search package to compare with")
    parser.add_argument("--repeats", type=int, default=1, help="builds per package (best time, max memory)")
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    from bench_bm25 import generate_corpus

    workdir = tempfile.mkdtemp(prefix="bench-build-")
    try:
        corpus = os.path.join(workdir, "corpus.jsonl")
        generate_corpus(corpus, args.passages)
        size_mb = os.path.getsize(corpus) / 2**20
        print(f"corpus: {args.passages} passages of 100 words ({size_mb:.0f} MB), engine {args.engine}, one core")
        roots = {"this checkout": ROOT}
        if args.before:
            roots = {"before": os.path.abspath(args.before), **roots}
        results = {}
        for repeat in range(args.repeats):
            for label, root in roots.items():  # interleaved, so drifts in machine load hit both alike
                out = os.path.join(workdir, f"out-{repeat}-{label.replace(' ', '-')}")
                seconds, cpu, peak = build(root, corpus, out, args.engine)
                best = results.setdefault(label, [float("inf"), float("inf"), 0.0])
                results[label] = [min(best[0], seconds), min(best[1], cpu), max(best[2], peak)]
                print(f"  {label}: {seconds:.1f} s wall, {cpu:.1f} s CPU, peak {peak:,.0f} MB", flush=True)
                shutil.rmtree(out)
        print(f"\n| package | build wall (best of {args.repeats}) | build CPU | peak memory |")
        print("|---|---|---|---|")
        for label, (seconds, cpu, peak) in results.items():
            print(f"| {label} | {seconds:.1f} s | {cpu:.1f} s | {peak:,.0f} MB |")
        if args.before:
            (b_s, b_cpu, b_mb), (a_s, a_cpu, a_mb) = results["before"], results["this checkout"]
            print(
                f"\nthis checkout / before: {a_s / b_s:.2f}x wall time, {a_cpu / b_cpu:.2f}x CPU time, "
                f"{a_mb / b_mb:.2f}x peak memory"
            )
        print(json.dumps(results))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
