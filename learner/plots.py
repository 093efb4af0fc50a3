"""The comparison's figures: loss curves, probe learning curves, nMSE bars, prediction grid, return against
label budget with its reference rows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _mean_std_curve(runs: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average `key` over seeds at the updates every seed logged."""
    updates = sorted(set.intersection(*(set(p["update"] for p in run) for run in runs)))
    values = np.array([[next(p[key] for p in run if p["update"] == u) for u in updates] for run in runs], float)
    return np.array(updates), values.mean(axis=0), values.std(axis=0)


def plot_losses(per_method: dict[str, list[dict]], path: Path) -> None:
    """Reconstruction loss per method (each in its own units: all pixels vs agent pixels)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in per_method.items():
        updates, mean, std = _mean_std_curve([r["loss_curve"] for r in runs], "reconstruction")
        ax.plot(updates, mean, label=name)
        ax.fill_between(updates, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="update", ylabel="reconstruction loss (per pixel, RGB summed)", yscale="log",
           title="training loss (LAPO: all pixels; MaskLAM: agent pixels)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_probe_curves(per_method: dict[str, list[dict]], path: Path) -> None:
    """Offline probe nMSE during training: decorrelated eval (solid), in-distribution (dashed),
    and the background-velocity probe (dotted)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, runs) in enumerate(per_method.items()):
        colour = f"C{i}"
        curves = [r["probe_curve"] for r in runs]
        for key, style in (("probe_nmse", "-"), ("probe_nmse_indist", "--")):
            updates, mean, std = _mean_std_curve(curves, key)
            axes[0].plot(updates, mean, style, color=colour, label=f"{name} {key}")
            axes[0].fill_between(updates, mean - std, mean + std, color=colour, alpha=0.15)
        if all(p["background_nmse"] is not None for c in curves for p in c):
            updates, mean, std = _mean_std_curve(curves, "background_nmse")
            axes[1].plot(updates, mean, ":", color=colour, label=name)
            axes[1].fill_between(updates, mean - std, mean + std, color=colour, alpha=0.15)
    axes[0].set(xlabel="update", ylabel="action probe nMSE", title="action probe (lower = latent holds the action)")
    axes[1].set(xlabel="update", ylabel="background-velocity probe nMSE",
                title="background probe (lower = latent holds the distractor)")
    _save_nmse_figure(fig, axes, path, legend_size=7)


def _save_nmse_figure(fig, axes, path: Path, legend_size: int) -> None:
    """Mark nMSE = 1 (no better than the mean) on every axis, add legends, save, close."""
    for ax in axes:
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_nmse_bars(methods: dict[str, dict], path: Path) -> None:
    """Headline nMSE per method with its spread over seeds, and per action dimension."""
    names = list(methods)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 2]})
    x = np.arange(len(names))
    for offset, (key, label) in zip((-0.2, 0.2), (("probe_nmse", "decorrelated eval"),
                                                  ("probe_nmse_indist", "in-distribution"))):
        axes[0].bar(x + offset, [methods[n][key] for n in names], 0.4, yerr=[methods[n][f"{key}_std"] for n in names],
                    capsize=4, label=label)
    axes[0].set_xticks(x, names)
    axes[0].set(ylabel="probe nMSE", title="action probe nMSE (mean, std over seeds)")
    dims = len(methods[names[0]]["probe_nmse_per_dim"])
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        axes[1].bar(np.arange(dims) + (i - (len(names) - 1) / 2) * width, methods[name]["probe_nmse_per_dim"], width,
                    yerr=methods[name]["probe_nmse_per_dim_std"], capsize=3, label=name)
    axes[1].set_xticks(np.arange(dims), [f"a{j}" for j in range(dims)])
    axes[1].set(ylabel="probe nMSE", title="per action dimension (decorrelated eval)")
    _save_nmse_figure(fig, axes, path, legend_size=8)


def plot_prediction_grid(context: np.ndarray, target: np.ndarray, mask: np.ndarray,
                         predictions: dict[str, np.ndarray], path: Path) -> None:
    """Rows = samples; columns = last context frame, target frame, target mask, each method's
    prediction. Images are uint8-ready floats in [0, 1], (N, H, W, 3); masks (N, H, W)."""
    columns = [("context o_t", context), ("target o_t+1", target), ("mask", mask),
               *((f"{name}", pred) for name, pred in predictions.items())]
    rows = len(target)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows), squeeze=False)
    for j, (title, images) in enumerate(columns):
        for i in range(rows):
            ax = axes[i, j]
            ax.imshow(np.clip(images[i], 0, 1), cmap="gray" if images.ndim == 3 else None, vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_return_vs_budget(methods: dict[str, dict], references: dict, path: Path) -> None:
    """Normalised return at rho = 0 (mean ± std over seeds) against the labelled budget: each
    method's latent policy + decoder, labels-only BC as a dashed line over the same budgets, and
    the ground-truth BC ceiling, the zero- and random-action floors and the expert as lines."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, m in methods.items():
        if not m.get("label_budgets"):
            continue
        budgets = np.array(m["label_budgets"])
        mean, std = np.array(m["normalized_return_per_budget"]), np.array(m["normalized_return_per_budget_std"])
        ax.errorbar(budgets, mean, yerr=std, marker="o", capsize=3, label=name)
    if labels_only := references.get("labels_only_bc"):
        budgets = np.array([int(b) for b in labels_only])
        mean = np.array([labels_only[b]["normalized_return"] for b in labels_only])
        std = np.array([labels_only[b]["normalized_return_std"] for b in labels_only])
        ax.errorbar(budgets, mean, yerr=std, color="black", linestyle="--", marker="s", capsize=3,
                    label="labels-only BC (same network)")
    for key, style, label in (("ground_truth_bc", "-", "ground-truth BC (ceiling)"),
                              ("random", "-.", "random action"), ("zero", ":", "zero action")):
        if key not in references:
            continue
        row = references[key]
        ax.axhline(row["normalized_return"], color="dimgrey", linestyle=style, label=label)
        ax.axhspan(row["normalized_return"] - row["normalized_return_std"],
                   row["normalized_return"] + row["normalized_return_std"], color="grey", alpha=0.1)
    ax.axhline(1.0, color="grey", linestyle=(0, (1, 4)), label="expert")
    ax.set(xscale="log", xlabel="labelled transitions (random whole episodes)", ylabel="normalised return (rho = 0)",
           title="return / expert return, with the references")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_online_returns(runs: dict[str, list[dict]], path: Path) -> None:
    """learner.main's evaluations: return (± standard error of the episode mean) against env
    steps, one line per run (`runs`: label -> summary.json's `evals`)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, evals in runs.items():
        steps = [e["env_steps"] for e in evals]
        returns = [np.asarray(e["returns"], float) for e in evals]
        mean = np.array([r.mean() for r in returns])
        sem = np.array([r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else 0.0 for r in returns])
        ax.errorbar(steps, mean, yerr=sem, marker="o", capsize=3, label=label)
    ax.set(xlabel="env steps (decisions)", ylabel="evaluation return", title="online learner: evaluation return")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
