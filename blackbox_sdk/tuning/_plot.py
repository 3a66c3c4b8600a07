"""The convergence plot of a search: train loss per generation and best so far, dev accuracy (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .._exceptions import TuningError
from ._state import DevRecord, GenerationRecord


def plot_convergence(
    path: str | Path, history: Sequence[GenerationRecord], dev_history: Sequence[DevRecord], *, loss: str, title: str
) -> Path:
    """Write the plot to path (parents created) and return it; TuningError when there is no history yet."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise TuningError("nothing to plot yet: call fit() first")
    figure = Figure(figsize=(7, 4), dpi=120)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    calls = [g.calls for g in history]
    axis.plot(calls, [g.mean_loss for g in history], color="0.6", label="population mean loss")
    axis.plot(calls, [g.best_so_far for g in history], color="tab:blue", label="best train loss")
    axis.set_xlabel("training calls")
    axis.set_ylabel(f"train loss ({loss})")
    if dev_history:
        dev_axis = axis.twinx()
        dev_axis.plot(
            [r.calls for r in dev_history],
            [r.accuracy for r in dev_history],
            "o-",
            color="tab:orange",
            label="dev accuracy",
        )
        dev_axis.set_ylabel("dev accuracy")
        dev_axis.set_ylim(0, 1)
        dev_axis.legend(loc="upper right")
    axis.legend(loc="upper left")
    axis.set_title(title)
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out
