"""A picture of the advice: throughput and mean ITL against batch size, B_opt and the latency cap
marked. matplotlib is imported here only, with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

from llmpack.api.profile import Profile
from llmpack.api.recommendation import Recommendation


def plot_recommendation(profile: Profile, rec: Recommendation, path: str | Path) -> Path:
    """Write a PNG to `path` and return it. Raises OSError when the file cannot be written."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    path = Path(path)
    verdicts = {v.max_num_seqs: v for v in rec.candidates}
    points = profile.points
    batches = [p.max_num_seqs for p in points]
    throughput = [p.total_tokens_per_s for p in points]

    fig, ax_t = plt.subplots(figsize=(9, 5.2), dpi=120)
    ax_l = ax_t.twinx()
    t_color, l_color = "#1f5fa8", "#d4661a"

    ax_t.plot(batches, throughput, "-", color=t_color, lw=1.8, zorder=2)
    for p in points:
        v = verdicts.get(p.max_num_seqs)
        kept = v is not None and v.kept
        skipped = p.preemptions > 0
        marker = "X" if skipped else "o"
        ax_t.scatter(
            [p.max_num_seqs],
            [p.total_tokens_per_s],
            marker=marker,
            s=46 if kept else 40,
            facecolor=t_color if kept else "white",
            edgecolor=t_color,
            linewidth=1.4,
            zorder=3,
        )

    timed = [(p.max_num_seqs, p.itl_or_tpot_mean_ms) for p in points if p.itl_or_tpot_mean_ms is not None]
    if timed:
        ax_l.plot(
            [b for b, _ in timed], [i for _, i in timed], "s--", color=l_color, lw=1.4, ms=4.5, zorder=2
        )
    if rec.latency_cap_ms is not None:
        ax_l.axhline(rec.latency_cap_ms, color=l_color, ls=":", lw=1.6)
        ax_l.annotate(
            f"latency cap {rec.latency_cap_ms:.1f} ms",
            xy=(batches[-1], rec.latency_cap_ms),
            xytext=(0, 4),
            textcoords="offset points",
            ha="right",
            color=l_color,
            fontsize=9,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
        )

    b_opt = rec.b_opt
    ax_t.axvline(b_opt, color="#2a9d3a", lw=2.0, alpha=0.85, zorder=1)
    chosen = profile.point(b_opt)
    label = f"B_opt = {b_opt}"
    if chosen is not None:
        label += f"\n{chosen.total_tokens_per_s:,.0f} tok/s"
    ax_t.annotate(
        label,
        xy=(b_opt, max(throughput) * 0.08),
        xytext=(6, 0),
        textcoords="offset points",
        color="#2a9d3a",
        fontsize=10,
        fontweight="bold",
    )

    ax_t.set_xscale("log", base=2)
    ticks = sorted(set(batches) | {b_opt})
    ax_t.xaxis.set_major_locator(FixedLocator(ticks))
    ax_t.xaxis.set_minor_locator(NullLocator())
    ax_t.xaxis.set_minor_formatter(NullFormatter())
    ax_t.set_xticks(ticks, [str(t) for t in ticks], fontsize=8, rotation=45 if len(ticks) > 10 else 0)
    ax_t.set_xlabel("--max-num-seqs (batch size)")
    ax_t.set_ylabel("throughput (prompt + output tokens/s)", color=t_color)
    ax_l.set_ylabel("mean inter-token latency (ms)", color=l_color)
    ax_t.tick_params(axis="y", colors=t_color)
    ax_l.tick_params(axis="y", colors=l_color)
    ax_t.set_ylim(bottom=0)
    top = max([i for _, i in timed] + [rec.latency_cap_ms or 0.0], default=1.0)
    ax_l.set_ylim(0, top * 1.15 or 1.0)
    ax_t.grid(True, which="major", alpha=0.25)

    eps = f"epsilon {rec.epsilon:g}"
    ax_t.set_title(
        f"{rec.model_name} on {profile.gpu.product}: B_opt = {b_opt} ({rec.policy}, {eps})\n"
        f"{rec.replicas_per_gpu} replica{'s' if rec.replicas_per_gpu != 1 else ''} per {rec.gpu_product}, "
        f"{rec.memory_freed_fraction:.1%} memory freed",
        fontsize=10,
    )
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=t_color, marker="o", label="throughput (filled: kept)"),
        Line2D([], [], color=l_color, marker="s", ls="--", label="mean ITL"),
        Line2D([], [], color="#2a9d3a", lw=2, label="B_opt"),
    ]
    if any(p.preemptions > 0 for p in points):
        handles.insert(
            1, Line2D([], [], color=t_color, marker="X", ls="", mfc="white", label="skipped: preemptions")
        )
    if rec.latency_cap_ms is not None:
        handles.append(Line2D([], [], color=l_color, ls=":", label="latency cap"))
    ax_l.legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.95)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
