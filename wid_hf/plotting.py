"""PNG plots of a WID run: the width schedule and the loss, from a trainer's state (or a planned schedule).

    >>> from wid_hf.plotting import plot_training
    >>> plot_training(trainer.state, "run.png")          # doctest: +SKIP
    >>> plot_schedule(WIDConfig.from_preset("wid11"), TeacherDims(768, 3072, 12), "wid11_schedule.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Iterable, Optional, Union

from .config import TeacherDims, WIDConfig
from .schedule import GROUP_KINDS, kept_sizes, pruning_end_step


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _history(state_or_history) -> list[dict]:
    if hasattr(state_or_history, "log_history"):
        return list(state_or_history.log_history)
    if isinstance(state_or_history, (str, os.PathLike)):
        import json

        with open(state_or_history) as f:  # a trainer_state.json
            return json.load(f)["log_history"]
    return list(state_or_history)


KIND_LABELS = {"hidden": "hidden", "attention": "attention", "ffn": "FFN", "head": "MLM head", "pooler": "pooler"}


def plot_training(state_or_history, path: Union[str, os.PathLike], title: Optional[str] = None,
                  config: Optional[WIDConfig] = None, dims: Optional[TeacherDims] = None,
                  teacher_loss: Optional[float] = None) -> str:
    """Kept width of each group kind (left; WID runs only) and the training / eval loss (right) over optimizer steps.

    `state_or_history` is a `TrainerState`, a ``trainer_state.json`` path, or a list of log dicts. With the run's
    resolved `config` and teacher `dims` the widths are drawn from the schedule itself, at every step (logged
    values at logging steps only would not line up with it); kinds that share the same widths share one line
    ("hidden = attention"). `teacher_loss` (e.g. the teacher's held-out masked-LM loss) is drawn as a reference."""
    history = _history(state_or_history)
    plt = _pyplot()
    logged = {kind: [(h["step"], h[f"wid/kept_{kind}"]) for h in history if f"wid/kept_{kind}" in h]
              for kind in GROUP_KINDS}
    logged = {kind: points for kind, points in logged.items() if points}
    if logged:  # a WID run: widths on the left
        fig, (ax_w, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
        last = max(h.get("step", 0) for h in history)
        series = _width_series(logged, config, dims, last)
        styles = iter(["-", "--", "-.", ":"] * 2)
        for kinds, points in series.items():
            start, end = points[0][1], points[-1][1]
            label = " = ".join(KIND_LABELS[k] for k in kinds) + f" ({start:,} -> {end:,})"
            full = kept_sizes(config, dims, 0)[kinds[0]] if config is not None and dims is not None else \
                max(y for _, y in points)
            ax_w.step([x for x, _ in points], [100 * y / full for _, y in points], where="post", label=label,
                      linestyle=next(styles), linewidth=1.8)
        hard = [h["step"] for h in history if h.get("wid/hard_masks") == 1.0]
        if config is not None and dims is not None:
            end_step = pruning_end_step(config, dims, tuple(k for ks in series for k in ks))
            ax_w.axvline(end_step, color="tab:green", linestyle=":", label=f"targets reached (step {end_step})")
        if hard:
            ax_w.axvline(min(hard), color="grey", linestyle="--", label=f"hard masks (step {min(hard)})")
        ax_w.set(xlabel="optimizer step", ylabel="kept width, % of the teacher's", title="Widths", ylim=(0, 105))
        ax_w.legend(loc="lower left", fontsize="small")
    else:  # a student trained at a fixed shape (a baseline): the loss only
        fig, ax_l = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "training loss"), ("eval_loss", "eval loss")):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax_l.plot(*zip(*points), marker="." if key == "eval_loss" else None, label=label)
    if teacher_loss is not None:
        ax_l.axhline(teacher_loss, color="black", linestyle="--", linewidth=1, label=f"teacher, held-out ({teacher_loss:.2f})")
    ax_l.set(xlabel="optimizer step", ylabel="masked-LM loss", title="Loss")
    ax_l.legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)


def _width_series(logged: dict, config, dims, last_step: int) -> dict[tuple, list]:
    """Kept width per kind as (step, width) points: from the schedule at every step when the config is known,
    else the logged values. Kinds with identical series are merged into one entry."""
    if config is not None and dims is not None:
        steps = range(0, last_step + 1, 1 if last_step <= 20_000 else max(1, config.mask_interval // 10))
        planned = [kept_sizes(config, dims, s) for s in steps]
        raw = {kind: [(s, sizes[kind]) for s, sizes in zip(steps, planned)] for kind in logged}
    else:
        raw = logged
    merged: dict[tuple, list] = {}
    for kind, points in raw.items():
        same = next((kinds for kinds, other in merged.items() if other == points), None)
        if same is None:
            merged[(kind,)] = points
        else:
            merged[same + (kind,)] = merged.pop(same)
    return merged


def plot_schedule(
    config: WIDConfig,
    dims: TeacherDims,
    path: Union[str, os.PathLike],
    steps: Optional[int] = None,
    kinds: Iterable[str] = ("hidden", "attention", "ffn", "head"),
) -> str:
    """The planned kept width of each group kind over steps (no model needed)."""
    end = pruning_end_step(config, dims, tuple(kinds))
    steps = steps or int(end * 1.25) + config.mask_interval
    xs = list(range(0, steps + 1, max(1, config.mask_interval // 10)))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in kinds:
        ax.step(xs, [kept_sizes(config, dims, s)[kind] for s in xs], where="post", label=kind)
    ax.axvline(end, color="grey", linestyle=":", label=f"targets reached ({end})")
    ax.set(xlabel="optimizer step", ylabel="kept width", title=f"WID schedule ({config.head_strategy})")
    ax.legend(loc="best", fontsize="small")
    return _save(plt, fig, path)


def _save(plt, fig, path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.fspath(path)
