"""What the demo shows: a rich progress display while it runs, then `results.json`, `results.md` and PNG plots."""

from __future__ import annotations

import json
import os
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
            f"[bold green]✓[/] {label}: held-out EM [bold]{metrics['em']:.3f}[/], "
            f"searches/question {metrics['searches_per_question']:.2f}"
        )

    def trainer_callback(self, label: str, em_curve=None) -> TrainerCallback:
        return _ProgressCallback(self, label, em_curve)


class _ProgressCallback(TrainerCallback):
    """A `rich` progress bar for one trainer run, showing the last loss or reward and the last held-out EM."""

    def __init__(self, display: Display, label: str, em_curve=None):
        self.display, self.label, self.em_curve = display, label, em_curve
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
            fields["held-out EM"] = self.em_curve.points[-1][1]
        info = "  ".join(f"{name} {value:.3f}" for name, value in fields.items())
        self.progress.update(self.task, completed=state.global_step, info=info)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self._refresh(state)
            self.progress.stop()
            self.progress = None


# --- Files ---------------------------------------------------------------------------------------------------------


def _fmt(value, std=None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f} ± {std:.3f}" if std is not None else f"{value:.3f}"


def results_table(results: dict) -> str:
    """The markdown table of held-out EM and searches per question, one row per stage and control.

    Example:
        >>> print(results_table({"stages": {"warm_start": {"em": 0.4, "searches_per_question": 0.5,
        ...                                                "answer_retrieved": 0.4}}}))
        | Stage | Held-out EM | Searches / question | Gold answer retrieved |
        |---|---|---|---|
        | Warm start (SFT), BM25 | 0.400 | 0.500 | 0.400 |
    """
    lines = ["| Stage | Held-out EM | Searches / question | Gold answer retrieved |", "|---|---|---|---|"]
    for key, label in STAGE_LABELS.items():
        stage = results["stages"].get(key)
        if stage is None:
            continue
        cells = [
            _fmt(stage.get(name), stage.get(f"{name}_std"))
            for name in ("em", "searches_per_question", "answer_retrieved")
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(results: dict, command: str | None = None) -> str:
    """`results.md`: the table, the run's size and timings, and the command that produced it."""
    config, timings = results["config"], results.get("timings", {})
    parts = ["# trl-search demo results", ""]
    if command:
        parts += ["Produced by:", "", "```bash", command, "```", ""]
    parts += [results_table(results), ""]
    world, model = results.get("world", {}), results.get("model", {})
    seeds = config["seeds"]
    parts.append(
        f"Held-out questions: {world.get('test_questions')} about {world.get('test_lands')} lands never seen in "
        f"training; model: {model.get('parameters', 0) / 1e6:.2f}M parameters (vocabulary {model.get('vocab_size')}); "
        f"RL: {config['rl_steps']} steps of {config['rl_prompts_per_step']} prompts x {config['num_generations']} "
        f"completions, {seeds} seed{'s' if seeds > 1 else ''} per run (mean ± std over seeds when more than one)."
    )
    if timings:
        spent = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
        parts += ["", f"Wall time: {spent}."]
    return "\n".join(parts) + "\n"


def plot_curves(results: dict, output_dir: str) -> list[str]:
    """Writes `training_curves.png` (training reward and held-out EM over RL steps, per run) and `searches.png`
    (searches per sample, and how often the gold answer was retrieved, over RL steps); curves are the mean over seeds.
    Returns the paths.
    """
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("The demo's plots need matplotlib: pip install 'trl-search[demo]'.") from error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run for run in RUN_COLORS if run in results["curves"]]
    labels = {run: STAGE_LABELS[run] for run in runs}
    paths = []

    figure, (reward_axis, em_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        reward = _mean_curve(results["curves"][run], "reward")
        em = _mean_curve(results["curves"][run], "heldout_em")
        reward_axis.plot(*zip(*_smooth(reward)), color=RUN_COLORS[run], label=labels[run])
        em_axis.plot(*zip(*em), marker="o", markersize=3, color=RUN_COLORS[run], label=labels[run])
    warm = results["stages"].get("warm_start", {}).get("em")
    if warm is not None:
        em_axis.axhline(warm, color="black", linestyle=":", linewidth=1, label="Warm start (SFT), BM25")
    reward_axis.set(
        title="Training reward (exact match, smoothed)", xlabel="RL step", ylabel="reward", ylim=(-0.02, 1.02)
    )
    em_axis.set(title="Held-out exact match (greedy)", xlabel="RL step", ylabel="EM", ylim=(-0.02, 1.02))
    em_axis.legend(fontsize=8, loc="upper left")
    for axis in (reward_axis, em_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    paths.append(os.path.join(output_dir, "training_curves.png"))
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    keys = ["searches_per_sample"]
    if any(_mean_curve(results["curves"][run], "answer_retrieved") for run in runs):  # absent from older results
        keys.append("answer_retrieved")
    titles = {
        "searches_per_sample": ("Searches per sample during RL (smoothed)", "searches / sample"),
        "answer_retrieved": ("Gold answer in the retrieved passages (smoothed)", "share of samples"),
    }
    figure, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for axis, key in zip(axes[0], keys):
        for run in runs:
            axis.plot(
                *zip(*_smooth(_mean_curve(results["curves"][run], key))), color=RUN_COLORS[run], label=labels[run]
            )
        axis.set(title=titles[key][0], xlabel="RL step", ylabel=titles[key][1])
        axis.set_ylim(-0.02, 1.05)
        axis.grid(alpha=0.3)
    search_axis = axes[0][0]
    search_axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    paths.append(os.path.join(output_dir, "searches.png"))
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return paths


def _mean_curve(per_seed: dict, key: str) -> list[tuple[float, float]]:
    """Averages one curve over seeds, step by step (seeds log the same steps)."""
    by_step: dict[float, list[float]] = {}
    for curves in per_seed.values():
        for point in curves.get(key, []):
            by_step.setdefault(point[0], []).append(point[1])
    return [(step, sum(values) / len(values)) for step, values in sorted(by_step.items())]


def _smooth(points, window: int = 10):
    """A trailing moving average: per-step rewards of small batches are noisy."""
    out = []
    for index, (step, _) in enumerate(points):
        recent = [value for _, value in points[max(0, index - window + 1) : index + 1]]
        out.append((step, sum(recent) / len(recent)))
    return out or [(0, 0.0)]


def write_report(results: dict, output_dir: str, command: str | None = None) -> dict:
    """Writes `results.json`, `results.md`, `training_curves.png` and `searches.png` into `output_dir`.

    Example:
        >>> write_report(results, "demo_output")  # doctest: +SKIP
        {'json': 'demo_output/results.json', ...}
    """
    os.makedirs(output_dir, exist_ok=True)
    paths = {"json": os.path.join(output_dir, "results.json"), "markdown": os.path.join(output_dir, "results.md")}
    with open(paths["json"], "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    with open(paths["markdown"], "w", encoding="utf-8") as handle:
        handle.write(results_markdown(results, command or results.get("command")))
    paths["curves"], paths["searches"] = plot_curves(results, output_dir)
    return paths
