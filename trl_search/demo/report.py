"""What the demo shows: a rich progress display while it runs, then `results.json`, `results.md` and PNG plots.

Results of one seed hold plain numbers; results over several seeds (`aggregate_seeds`) hold, for every number,
`{"mean", "min", "max", "values"}`. The table and the plots read both.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
from contextlib import nullcontext

from transformers import TrainerCallback


# stage key -> row label of the results table, in display order
STAGE_LABELS = {
    "warm_start_no_retrieval": "Warm start (SFT), retriever returns nothing",
    "warm_start": "Warm start (SFT), BM25",
    "rl_no_retrieval": "RL, retriever returns nothing",
    "rl_no_mask": "RL with BM25, retrieved tokens not masked",
    "rl_search": "RL with BM25 (Search-R1)",
}
RUN_COLORS = {"rl_search": "tab:blue", "rl_no_mask": "tab:orange", "rl_no_retrieval": "tab:gray"}
TYPE_LABELS = {"all": "all", "one_hop": "one-hop", "two_hop": "two-hop"}
# table columns: (question type, metric, header)
COLUMNS = (
    ("all", "em", "EM, all"),
    ("one_hop", "em", "EM, one-hop"),
    ("two_hop", "em", "EM, two-hop"),
    ("one_hop", "searches_per_sample", "Searches / one-hop question"),
    ("two_hop", "searches_per_sample", "Searches / two-hop question"),
)


class Display:
    """Progress on the terminal with `rich`: a spinner per stage, a bar per training run.

    Example:
        >>> display = Display(enabled=False)
        >>> with display.status("building"):
        ...     pass
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.console = None
        if enabled:
            try:
                from rich.console import Console
            except ImportError as error:
                raise ImportError(
                    "The demo's progress display needs rich: pip install 'trl-search[demo]' (or pass --no_progress)."
                ) from error

            self.console = Console()

    def status(self, message: str):
        return self.console.status(message) if self.enabled else nullcontext()

    def print(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    def stage_done(self, label: str, metrics: dict) -> None:
        self.print(
            f"[bold green]✓[/] {label}: held-out EM [bold]{metrics['all']['em']:.3f}[/] (one-hop "
            f"{metrics['one_hop']['em']:.3f}, two-hop {metrics['two_hop']['em']:.3f}); searches per question "
            f"{metrics['one_hop']['searches_per_sample']:.2f} / {metrics['two_hop']['searches_per_sample']:.2f}"
        )

    def seed_done(self, seed: int, results: dict) -> None:
        stages, seconds = results["stages"], results["timings"]["total"]
        ems = ", ".join(f"{key} {stage['all']['em']:.3f}" for key, stage in stages.items())
        self.print(f"[bold green]✓[/] seed {seed} ({seconds:.0f} s): held-out EM {ems}")

    def trainer_callback(self, label: str, em_curve=None, copy_probe=None) -> TrainerCallback:
        return _ProgressCallback(self, label, em_curve, copy_probe)


class _ProgressCallback(TrainerCallback):
    """A `rich` progress bar for one trainer run: the last loss or reward, held-out EM or the copy rate."""

    def __init__(self, display: Display, label: str, em_curve=None, copy_probe=None):
        self.display, self.label, self.em_curve, self.copy_probe = display, label, em_curve, copy_probe
        self.progress, self.task, self.fields = None, None, {}

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.display.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.display.console,
        )
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=state.max_steps, info="")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        for key, name in (("loss", "loss"), ("reward", "reward"), ("search/searches_per_sample", "searches")):
            if key in logs:
                self.fields[name] = logs[key]
        self._refresh(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self._refresh(state)

    def _refresh(self, state):
        fields = dict(self.fields)
        if self.em_curve is not None and self.em_curve.points:
            point = self.em_curve.points[-1]
            fields["held-out EM 1-hop"], fields["2-hop"] = point["em_one_hop"], point["em_two_hop"]
        if self.copy_probe is not None and self.copy_probe.points:
            fields["copy rate"] = self.copy_probe.points[-1][1]
        info = "  ".join(f"{name} {value:.3f}" for name, value in fields.items())
        self.progress.update(self.task, completed=state.global_step, info=info)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self._refresh(state)
            self.progress.stop()
            self.progress = None


# --- Several seeds -------------------------------------------------------------------------------------------------


def spread(values: list[float | None]) -> dict | None:
    """`{"mean", "min", "max", "values"}` of a number over seeds (None when no seed has it).

    Example:
        >>> spread([0.5, 0.7, 0.6])["mean"]
        0.6
    """
    present = [value for value in values if value is not None]
    if not present:
        return None
    return {"mean": statistics.fmean(present), "min": min(present), "max": max(present), "values": values}


def aggregate_seeds(config, per_seed: dict[int, dict], seconds: float) -> dict:
    """Results over seeds: every stage metric and timing as a `spread`, the curves per seed, and each seed's results.

    Example:
        >>> one = {"stages": {"rl_search": {"all": {"em": 0.5}}}, "timings": {"total": 10.0},
        ...        "warm_start": {"steps": 300}, "curves": {}}
        >>> two = {"stages": {"rl_search": {"all": {"em": 0.7}}}, "timings": {"total": 12.0},
        ...        "warm_start": {"steps": 350}, "curves": {}}
        >>> from trl_search.demo import DemoConfig
        >>> aggregate_seeds(DemoConfig(seeds=2), {0: one, 1: two}, 22.0)["stages"]["rl_search"]["all"]["em"]["max"]
        0.7
    """
    from dataclasses import asdict

    from .pipeline import _jsonable

    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    stages = {
        stage: {
            kind: {
                key: spread([per_seed[seed]["stages"][stage][kind][key] for seed in seeds])
                for key in first["stages"][stage][kind]
            }
            for kind in first["stages"][stage]
        }
        for stage in first["stages"]
    }
    timings = {name: spread([per_seed[seed]["timings"][name] for seed in seeds]) for name in first["timings"]}
    runs = [run for run in first["curves"]]
    return {
        "config": _jsonable(asdict(config)),
        "seeds": seeds,
        "stages": stages,
        "timings": {**timings, "all_seeds": seconds},
        "warm_start": {"steps": spread([per_seed[seed]["warm_start"]["steps"] for seed in seeds])},
        "curves": {run: {str(seed): per_seed[seed]["curves"][run] for seed in seeds} for run in runs},
        "warm_start_curves": {str(seed): per_seed[seed].get("warm_start", {}).get("copy_rate", []) for seed in seeds},
        "world": first.get("world"),
        "model": first.get("model"),
        "teacher": first.get("teacher"),
        "per_seed": {
            str(seed): {
                "stages": per_seed[seed]["stages"],
                "timings": per_seed[seed]["timings"],
                "warm_start": {key: per_seed[seed]["warm_start"].get(key) for key in ("steps", "stopped_by")},
            }
            for seed in seeds
        },
    }


# --- Files ---------------------------------------------------------------------------------------------------------


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, dict):
        return f"{value['mean']:.3f} ({value['min']:.3f}–{value['max']:.3f})"
    return f"{value:.3f}"


def results_table(results: dict) -> str:
    """The markdown table of held-out EM and searches per question, per question type, one row per stage and control;
    over several seeds each cell is `mean (min–max)`.

    Example:
        >>> stage = {kind: {"em": 0.5, "searches_per_sample": 1.0} for kind in ("all", "one_hop", "two_hop")}
        >>> print(results_table({"stages": {"warm_start": stage}}).splitlines()[-1])
        | Warm start (SFT), BM25 | 0.500 | 0.500 | 0.500 | 1.000 | 1.000 |
    """
    lines = ["| Stage | " + " | ".join(header for *_, header in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for key, label in STAGE_LABELS.items():
        stage = results["stages"].get(key)
        if stage is None:
            continue
        cells = [_fmt(stage.get(kind, {}).get(metric)) for kind, metric, _ in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seconds(value) -> str:
    if isinstance(value, dict):
        return f"{value['mean']:.0f} s (min {value['min']:.0f}, max {value['max']:.0f})"
    return f"{value:.0f} s"


def results_markdown(results: dict, command: str | None = None) -> str:
    """`results.md`: the command, the table, the run's size, the warm start's length and the wall times."""
    config, timings = results["config"], results.get("timings", {})
    parts = ["# trl-search demo results", ""]
    if command:
        parts += ["Produced by:", "", "```bash", command, "```", ""]
    seeds = results.get("seeds", [config["seed"]])
    if len(seeds) > 1:
        parts += [f"Seeds {seeds[0]}..{seeds[-1]}, each a whole run (world, model, warm start, RL); cells are the mean "
                  "over seeds (min–max).", ""]  # fmt: skip
    else:
        parts += [f"Seed {seeds[0]}.", ""]
    parts += [results_table(results), ""]
    if len(seeds) > 1:
        parts += ["Per seed (held-out EM, all questions / one-hop / two-hop):", "", seeds_table(results), ""]
    world, model = results.get("world") or {}, results.get("model") or {}
    tests = world.get("test_questions") or {}
    parts.append(
        f"Held-out: {tests.get('one_hop')} one-hop and {tests.get('two_hop')} two-hop questions about "
        f"{world.get('test_lands')} lands never seen in training, greedy. Model: "
        f"{model.get('parameters', 0) / 1e6:.2f}M parameters (vocabulary {model.get('vocab_size')}). Warm start: "
        f"{_steps(results)} steps (stops when the validation copy rate reaches {config['sft_copy_threshold']}, cap "
        f"{config['sft_max_steps']}). RL: {config['rl_steps']} steps of {config['rl_prompts_per_step']} questions x "
        f"{config['num_generations']} completions, up to {config['max_turns']} searches, top-"
        f"{config['retrieval_top_k']} BM25 passage."
    )
    machine = results.get("machine")
    if machine:
        parts += [
            "",
            f"Measured on {machine['cpus']} CPU cores ({machine['processor']}); 1-minute load average "
            f"{machine['load_average_start']} at the start, {machine['load_average_end']} at the end (above "
            f"{machine['cpus']}: other processes shared the cores).",
        ]
    if timings:
        spent = "; ".join(f"{name} {_seconds(value)}" for name, value in timings.items() if name != "all_seeds")
        parts += ["", f"Wall time per seed: {spent}."]
        if "all_seeds" in timings:
            parts.append(
                f"All {len(seeds)} seeds: {timings['all_seeds']:.0f} s in {config['workers']} process(es), "
                f"{config['num_threads']} thread each."
            )
    return "\n".join(parts) + "\n"


def seeds_table(results: dict) -> str:
    """One row per seed of a several-seed run: the warm start's length and why it stopped, held-out EM of every stage
    (all / one-hop / two-hop) and the seed's wall time, so that every seed can be checked, not only the mean.

    Example:
        >>> stage = {"all": {"em": 0.9}, "one_hop": {"em": 1.0}, "two_hop": {"em": 0.7}}
        >>> seed = {"stages": {"rl_search": stage}, "timings": {"total": 250.0},
        ...         "warm_start": {"steps": 450, "stopped_by": "copy rate"}}
        >>> print(seeds_table({"per_seed": {"0": seed}}))
        | Seed | Warm start | RL with BM25 (Search-R1) | Wall time |
        |---|---|---|---|
        | 0 | 450 steps (copy rate) | 0.900 / 1.000 / 0.700 | 250 s |
    """
    per_seed = results["per_seed"]
    stages = [stage for stage in STAGE_LABELS if stage in next(iter(per_seed.values()))["stages"]]
    lines = [
        "| Seed | Warm start | " + " | ".join(STAGE_LABELS[stage] for stage in stages) + " | Wall time |",
        "|---" * (len(stages) + 3) + "|",
    ]
    for seed, result in per_seed.items():
        warm = result.get("warm_start") or {}
        cells = [f"{warm.get('steps')} steps ({warm.get('stopped_by')})"]
        for stage in stages:
            cells.append(" / ".join(f"{result['stages'][stage][kind]['em']:.3f}" for kind in TYPE_LABELS))
        cells.append(f"{result['timings']['total']:.0f} s")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _steps(results: dict) -> str:
    steps = results.get("warm_start", {}).get("steps")
    if isinstance(steps, dict):
        return f"{steps['mean']:.0f} (min {steps['min']}, max {steps['max']})"
    return str(steps)


def _seed_curves(results: dict, run: str) -> list[dict]:
    curves = results["curves"][run]
    return list(curves.values()) if "reward" not in curves else [curves]


def _band(per_seed: list[list[tuple[float, float]]]):
    """Mean, min and max of one curve over seeds, step by step (seeds log the same steps)."""
    by_step: dict[float, list[float]] = {}
    for points in per_seed:
        for step, value in points:
            if value is not None:
                by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return (
        steps,
        [statistics.fmean(by_step[step]) for step in steps],
        [min(by_step[step]) for step in steps],
        [max(by_step[step]) for step in steps],
    )


def _plot_band(axis, per_seed, color, label, linestyle="-", marker=None):
    steps, mean, low, high = _band(per_seed)
    if not steps:
        return
    axis.plot(steps, mean, color=color, label=label, linestyle=linestyle, marker=marker, markersize=3)
    if len(per_seed) > 1:
        axis.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)


def _stage_mean(results: dict, stage: str, kind: str, metric: str):
    value = results["stages"].get(stage, {}).get(kind, {}).get(metric)
    return value["mean"] if isinstance(value, dict) else value


def plot_curves(results: dict, output_dir: str) -> list[str]:
    """Writes `training_curves.png` (training reward, and held-out EM per question type, over RL steps) and
    `searches.png` (held-out searches per question type over RL steps, and the warm start's copy rate). Lines are
    the mean over seeds, bands the min–max. Returns the paths.
    """
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("The demo's plots need matplotlib: pip install 'trl-search[demo]'.") from error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run for run in RUN_COLORS if run in results["curves"]]
    seeds = results.get("seeds", [results["config"]["seed"]])
    suffix = f" (mean of {len(seeds)} seeds, band min–max)" if len(seeds) > 1 else f" (seed {seeds[0]})"
    paths = []

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run in runs:
        per_seed = _seed_curves(results, run)
        color, label = RUN_COLORS[run], STAGE_LABELS[run]
        _plot_band(axes[0], [_smooth(curves["reward"]) for curves in per_seed], color, label)
        for axis, kind in zip(axes[1:], ("one_hop", "two_hop")):
            points = [[(point["step"], point[f"em_{kind}"]) for point in curves["heldout"]] for curves in per_seed]
            _plot_band(axis, points, color, label, marker="o")
    for axis, kind in zip(axes[1:], ("one_hop", "two_hop")):
        warm = _stage_mean(results, "warm_start", kind, "em")
        if warm is not None:
            axis.axhline(warm, color="black", linestyle=":", linewidth=1, label="Warm start (SFT), BM25")
        axis.set(title=f"Held-out EM, {TYPE_LABELS[kind]} questions (greedy)", xlabel="RL step", ylabel="EM")
    axes[0].set(title="Training reward (exact match, smoothed)", xlabel="RL step", ylabel="reward")
    axes[1].legend(fontsize=8, loc="upper left")
    for axis in axes:
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    figure.suptitle("trl-search demo" + suffix, fontsize=10)
    figure.tight_layout()
    paths.append(os.path.join(output_dir, "training_curves.png"))
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    figure, (search_axis, copy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        per_seed = _seed_curves(results, run)
        for kind, linestyle in (("one_hop", "-"), ("two_hop", "--")):
            points = [
                [(point["step"], point[f"searches_{kind}"]) for point in curves["heldout"]] for curves in per_seed
            ]
            _plot_band(search_axis, points, RUN_COLORS[run], f"{STAGE_LABELS[run]}, {TYPE_LABELS[kind]}", linestyle)
    search_axis.set(title="Held-out searches per question (greedy)", xlabel="RL step", ylabel="searches / question")
    search_axis.set_ylim(-0.05, 2.1)
    search_axis.legend(fontsize=7, loc="lower right")
    warm_curves = results.get("warm_start_curves") or {
        str(seeds[0]): results.get("warm_start", {}).get("copy_rate", [])
    }
    for seed, points in warm_curves.items():
        if points:
            copy_axis.plot(
                [p[0] for p in points], [p[1] for p in points], marker="o", markersize=2, label=f"seed {seed}"
            )
    copy_axis.axhline(results["config"]["sft_copy_threshold"], color="black", linestyle=":", linewidth=1, label="stop")
    copy_axis.set(title="Warm start: validation copy rate", xlabel="SFT step", ylabel="answered right")
    copy_axis.set_ylim(-0.02, 1.02)
    copy_axis.legend(fontsize=7, loc="lower right")
    for axis in (search_axis, copy_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    paths.append(os.path.join(output_dir, "searches.png"))
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return paths


def _smooth(points, window: int = 10):
    """A trailing moving average: per-step rewards of small batches are noisy."""
    out = []
    for index, (step, _) in enumerate(points):
        recent = [value for _, value in points[max(0, index - window + 1) : index + 1]]
        out.append((step, sum(recent) / len(recent)))
    return out


def write_report(results: dict, output_dir: str, command: str | None = None) -> dict:
    """Writes `results.json`, `results.md`, `training_curves.png` and `searches.png` into `output_dir`.

    Example:
        >>> write_report(results, "demo_output")  # doctest: +SKIP
        {'json': 'demo_output/results.json', ...}
    """
    os.makedirs(output_dir, exist_ok=True)
    results["table"] = results_table(results)
    paths = {"json": os.path.join(output_dir, "results.json"), "markdown": os.path.join(output_dir, "results.md")}
    with open(paths["json"], "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    with open(paths["markdown"], "w", encoding="utf-8") as handle:
        handle.write(results_markdown(results, command or results.get("command")))
    paths["curves"], paths["searches"] = plot_curves(results, output_dir)
    return paths


# --- Generated blocks in the docs ----------------------------------------------------------------------------------

# A block of a Markdown file that is a copy of a run's results.md, refreshed by `python -m trl_search.demo.report`:
# published demo numbers are never typed by hand (tests/test_demo_docs.py checks that every block matches its source).
GENERATED_BLOCK = re.compile(
    r"(<!-- generated from (?P<source>\S+) by python -m trl_search.demo.report -->\n)(?P<body>.*?)(<!-- end generated -->)",
    re.DOTALL,
)


def generated_body(results_md: str) -> str:
    """What a generated block holds: the run's `results.md` without its title.

    Example:
        >>> generated_body("# trl-search demo results\\n\\nProduced by: ...\\n")
        'Produced by: ...\\n'
    """
    return re.sub(r"\A# [^\n]*\n\n?", "", results_md)


def sync_generated_blocks(path: str, root: str = ".") -> list[str]:
    """Rewrites every generated block of the Markdown file `path` from its source (a path relative to `root`);
    returns the sources it read."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    sources = []

    def refresh(match: re.Match) -> str:
        sources.append(match.group("source"))
        with open(os.path.join(root, match.group("source")), encoding="utf-8") as handle:
            return match.group(1) + generated_body(handle.read()) + match.group(4)

    updated = GENERATED_BLOCK.sub(refresh, text)
    if updated != text:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(updated)
    return sources


if __name__ == "__main__":  # python -m trl_search.demo.report [FILE ...]: refresh the generated blocks of the docs
    for markdown in sys.argv[1:] or ["README.md", "docs/demo/README.md"]:
        print(markdown, "<-", ", ".join(sync_generated_blocks(markdown)) or "no generated block")
