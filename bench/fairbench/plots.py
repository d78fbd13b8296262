"""PNG plots: accumulated service over time per tenant, one panel per policy, one file per
workload."""

from __future__ import annotations

from pathlib import Path

from .results import Row


def plot(
    rows: list[Row],
    img_dir: Path,
    prefix: str = "fairness",
    per: float = 1e6,
    unit: str = "millions",
) -> list[Path]:
    """One PNG per workload: accumulated service over time per tenant, one panel per policy.

    Files are ``<prefix>_<workload>.png``; service is plotted in units of ``per`` (``unit``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for wl in dict.fromkeys(r.workload for r in rows):
        group = [r for r in rows if r.workload == wl]
        fig, axes = plt.subplots(1, len(group), figsize=(3.2 * len(group), 3.0), sharey=True)
        for ax, r in zip(list(getattr(axes, "flat", [axes])), group, strict=True):
            stride = max(1, len(r.res.times) // 600)
            xs = r.res.times[::stride]
            for tenant, ys in sorted(r.res.service.items()):
                ax.plot(xs, [y / per for y in ys[::stride]], label=tenant)
            ax.set_title(r.policy, fontsize=10)
            ax.set_xlabel("time (s)")
            ax.grid(alpha=0.3)
        axes_list = list(getattr(axes, "flat", [axes]))
        axes_list[0].set_ylabel(f"service, {unit} (in + 2 out)")
        axes_list[0].legend(fontsize=8)
        fig.suptitle(f"{wl}: accumulated service per tenant", fontsize=11)
        fig.tight_layout()
        path = img_dir / f"{prefix}_{wl}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
