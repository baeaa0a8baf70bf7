"""Killing `trl-search index`: SIGTERM and SIGINT remove every temporary folder and copy; what SIGKILL leaves is
removed by the next build of the same output. Real processes, real signals."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from trl_search.cli import main
from trl_search.retrievers import load_retriever
from trl_search.retrievers.manifest import remove_stale_temporaries


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """Enough passages that a build is still running a second after it starts (~10 s to index on one core)."""
    rng = np.random.default_rng(0)
    words = np.array(["".join(rng.choice(list("abcdefghij"), size=6)) for _ in range(5000)])
    path = tmp_path_factory.mktemp("big") / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(60_000):
            handle.write(json.dumps({"id": str(i), "contents": f'"T{i}"\n' + " ".join(rng.choice(words, 60))}) + "\n")
    return path


def start_build(corpus, out, tmpdir):
    env = {**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "trl_search.cli", "index", "--corpus", str(corpus), "--out", str(out)]
    process = subprocess.Popen(
        [*command, "--no-progress"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job (`pytest &`, nohup) ignores SIGINT, and children inherit that; the build must meet
        # SIGINT as a terminal user sends it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 60
    while not any(name.startswith(f".{out.name}.build-") for name in os.listdir(out.parent)):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "the build never created its work folder"
        time.sleep(0.02)
    time.sleep(0.5)  # well inside the build: the store is being written
    return process


# SIGTERM exits with 128 + 15; SIGINT, once cleaned up, dies of SIGINT as interrupted programs should.
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)])
def test_terminate_and_interrupt_leave_nothing(big_corpus, tmp_path, signum, code):
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "index"
    process = start_build(big_corpus, out, tmp_path / "tmp")
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "temporary files removed" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == ["tmp"]  # no index, no staging or work folder next to it
    assert os.listdir(tmp_path / "tmp") == []  # no copy of the passages in $TMPDIR either


def test_what_sigkill_leaves_is_removed_by_the_next_build(big_corpus, tmp_path):
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "index"
    process = start_build(big_corpus, out, tmp_path / "tmp")
    process.kill()
    process.wait(timeout=60)
    debris = [name for name in os.listdir(tmp_path) if name.startswith(".index.")]
    assert debris and not out.exists()

    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps({"id": "a", "contents": '"Pim"\nA hamlet.'}) + "\n", encoding="utf-8")
    assert main(["index", "--corpus", str(small), "--out", str(out), "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["index", "small.jsonl", "tmp"]
    assert load_retriever(out).search(["hamlet"], k=1)[0][0].id == "a"


def test_a_previous_index_renamed_aside_by_a_kill_is_restored(tmp_path):
    """A kill between the two renames that replace an index leaves the old index as `.name.old-PID-*` and no `name`:
    the next write puts it back first, so the index is never lost."""
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps({"id": "a", "contents": '"Pim"\nA hamlet.'}) + "\n", encoding="utf-8")
    out = tmp_path / "index"
    assert main(["index", "--corpus", str(small), "--out", str(out), "--no-progress"]) == 0
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    os.replace(out, tmp_path / f".index.old-{dead_pid}-x1")
    (tmp_path / f".index.tmp-{dead_pid}-x2").mkdir()
    live = tmp_path / f".index.tmp-{os.getpid()}-x3"  # a build still running in this process: kept
    live.mkdir()
    cleaned = remove_stale_temporaries(out)
    assert len(cleaned) == 2 and out.is_dir() and live.is_dir()
    assert load_retriever(out).search(["hamlet"], k=1)[0][0].id == "a"
