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


def plot_training(state_or_history, path: Union[str, os.PathLike], title: Optional[str] = None) -> str:
    """Kept widths per group kind (left; WID runs only) and training / eval loss (right) over optimizer steps.

    `state_or_history` is a `TrainerState`, a ``trainer_state.json`` path, or a list of log dicts."""
    history = _history(state_or_history)
    plt = _pyplot()
    widths = {kind: [(h["step"], h[f"wid/kept_{kind}"]) for h in history if f"wid/kept_{kind}" in h]
              for kind in GROUP_KINDS}
    widths = {kind: points for kind, points in widths.items() if points}
    if widths:  # a WID run: widths on the left
        fig, (ax_w, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
        for kind, points in widths.items():
            ax_w.step(*zip(*points), where="post", label=kind)
        hard = [h["step"] for h in history if h.get("wid/hard_masks") == 1.0]
        if hard:
            ax_w.axvline(min(hard), color="grey", linestyle=":", label="hard masks")
        ax_w.set(xlabel="optimizer step", ylabel="kept width", title="Widths")
        ax_w.legend(loc="best", fontsize="small")
    else:  # a student trained at a fixed shape (a baseline): the loss only
        fig, ax_l = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax_l.plot(*zip(*points), marker="." if key == "eval_loss" else None, label=label)
    ax_l.set(xlabel="optimizer step", ylabel="masked-LM loss", title="Loss")
    ax_l.legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)


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
