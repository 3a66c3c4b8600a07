"""The training curve saved beside an adapter: loss per step and held-out accuracy per epoch (PNG)."""

from __future__ import annotations

from pathlib import Path

from ._trainer import TrainResult


def plot_curve(result: TrainResult, path: str | Path, *, title: str = "BBox-Adapter training") -> Path:
    """Save the loss per step and held-out accuracy per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot([s["step"] for s in result.steps], [s["loss"] for s in result.steps], color="tab:blue", lw=1)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss", color="tab:blue")
    if result.evals:
        per_epoch = max(1, len(result.steps) // max(len(result.evals), 1))
        acc_axis = loss_axis.twinx()
        xs = [e["epoch"] * per_epoch for e in result.evals]
        acc_axis.plot(xs, [e["pair_accuracy"] for e in result.evals], "o-", color="tab:red", label="pairwise")
        acc_axis.plot(xs, [e["top1_accuracy"] for e in result.evals], "s--", color="tab:orange", label="top-1")
        acc_axis.set_ylabel("held-out ranking accuracy", color="tab:red")
        acc_axis.set_ylim(0, 1)
        acc_axis.legend(loc="lower right")
    loss_axis.set_title(title)
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
