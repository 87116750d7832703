"""Learning-curve and cross-validation plots (matplotlib is an optional dependency)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchmf.cli.common import CLIError

__all__ = ["plot_folds", "plot_histories", "prepare_plot", "require_matplotlib"]


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on a file-only backend, or a clear CLIError."""
    try:
        import matplotlib
    except ImportError:
        raise CLIError("--plot needs matplotlib: pip install 'torchmf[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def prepare_plot(path: str) -> None:
    """Fail before any training when ``--plot`` cannot be written: no matplotlib, no folder."""
    _check_target(path)
    require_matplotlib()


def _check_target(path: str) -> Path:
    p = Path(path)
    if p.parent != Path() and not p.parent.is_dir():
        raise CLIError(f"--plot {path}: folder {p.parent} does not exist")
    if p.is_dir():
        raise CLIError(f"--plot {path}: is a folder; give a file name such as curves.png")
    return p


def plot_histories(path: str, histories: Sequence[Sequence[dict[str, float]]], labels: Sequence[str]) -> Path:
    """Train loss (left) and every validation metric (right) per epoch, one line per history."""
    target = _check_target(path)
    plt = require_matplotlib()
    val_keys = list(dict.fromkeys(k for h in histories for row in h for k in row if k.startswith("val_")))
    fig, axes = plt.subplots(1, 2 if val_keys else 1, figsize=(10 if val_keys else 5.5, 4), squeeze=False)
    ax_loss = axes[0][0]
    for hist, label in zip(histories, labels, strict=True):
        epochs = [row["epoch"] for row in hist]
        ax_loss.plot(epochs, [row["train_loss"] for row in hist], marker="o", ms=3, label=label)
        for n, key in enumerate(val_keys):
            name = key[4:].upper() if key in ("val_rmse", "val_mae") else key[4:]
            axes[0][1].plot(epochs, [row.get(key, float("nan")) for row in hist], "-" if n == 0 else "--",
                            marker="o", ms=3, label=f"{label} {name}".strip())
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    for ax in axes[0]:
        ax.locator_params(axis="x", integer=True)
    if val_keys:
        errors = all(k in ("val_rmse", "val_mae") for k in val_keys)
        axes[0][1].set(title="validation", xlabel="epoch", ylabel="error (rating units)" if errors else "metric")
        axes[0][1].legend(fontsize="small")
    if len(histories) > 1 or any(labels):
        ax_loss.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, target, plt)
    return target


def plot_folds(path: str, table: Any, metrics: Sequence[str], histories: Sequence[Any] | None = None) -> Path:
    """Training loss per epoch of each fold (when ``histories``), then one panel per metric across folds."""
    target = _check_target(path)
    plt = require_matplotlib()
    metrics = [m for m in metrics if m in table.columns]
    histories = [h for h in (histories or []) if h]
    n_panels = len(metrics) + (1 if histories else 0)
    if n_panels == 0:
        raise CLIError("nothing to plot: the cross-validation results have no metric columns")
    fig, axes = plt.subplots(1, n_panels, figsize=(3.4 * n_panels, 3.4), squeeze=False)
    panels = list(axes[0])
    if histories:
        ax = panels.pop(0)
        for n, hist in enumerate(histories, 1):
            ax.plot([r["epoch"] for r in hist], [r["train_loss"] for r in hist], marker="o", ms=3, label=f"fold {n}")
        ax.set(title="training loss", xlabel="epoch")
        ax.locator_params(axis="x", integer=True)
        ax.legend(fontsize="small")
    folds = list(range(1, len(table) + 1))
    for ax, name in zip(panels, metrics, strict=True):
        values = table[name].astype(float).tolist()
        ax.bar(folds, values, color="tab:blue", alpha=0.7)
        mean = sum(values) / len(values)
        ax.axhline(mean, color="tab:red", ls="--", label=f"mean {mean:.4f}")
        ax.set(title=name, xlabel="fold", xticks=folds)
        ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, target, plt)
    return target


def _save(fig: Any, target: Path, plt: Any) -> None:
    try:
        fig.savefig(target, dpi=110)
    except (OSError, ValueError) as exc:
        raise CLIError(f"--plot {target}: cannot write the figure ({exc})") from None
    finally:
        plt.close(fig)
