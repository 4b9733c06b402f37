"""PNG figures of an evaluation: return distributions side by side, example trajectories."""

from __future__ import annotations

import io

import numpy as np

from diffpol.evaluator.evaluate import EXAMPLE_KINDS, EvaluationResult, PolicyResult

_EXAMPLE_COLORS = {"best": "tab:green", "median": "tab:blue", "worst": "tab:red"}


def _pyplot():
    # Imported on first plot: Ray workers import this package and never draw.
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def returns_figure(result: EvaluationResult) -> bytes:
    """Box plot of every policy's episode returns, with the episodes as jittered dots and
    the mean as a diamond; policies top to bottom in the order given."""
    plt = _pyplot()
    labels = result.labels
    height = 1.2 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(8, height), dpi=110)
    try:
        data = [p.returns for p in result.policies]
        positions = np.arange(len(labels), 0, -1)
        ax.boxplot(
            data, positions=positions, orientation="horizontal", widths=0.6, showfliers=False
        )
        jitter = np.random.default_rng(0)  # fixed: the figure is reproducible
        for y, p in zip(positions, result.policies, strict=True):
            ax.scatter(
                p.returns,
                y + jitter.uniform(-0.18, 0.18, p.returns.size),
                s=4,
                alpha=0.35,
                color="tab:blue",
                linewidths=0,
            )
            ax.scatter([p.summary.mean], [y], marker="D", color="tab:orange", zorder=3, s=25)
        ax.set_yticks(positions)
        ax.set_yticklabels(labels)
        ax.set_xlabel("episode return")
        ax.set_title(
            f"{result.env.env_id}: returns over seeds {result.config.seeds} "
            f"(n = {len(result.config.seeds)}; diamond = mean)",
            fontsize=10,
        )
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


def trajectories_figure(result: EvaluationResult, policy: PolicyResult) -> bytes:
    """The best, median and worst episodes of one policy: state variable and action."""
    plt = _pyplot()
    view = result.view
    fig, (ax_state, ax_action) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True, dpi=110)
    try:
        for kind in EXAMPLE_KINDS:
            trajectory = policy.examples.get(kind)
            if trajectory is None:
                continue
            name = f"{kind}: seed {trajectory.seed}, return {trajectory.episode_return:.1f}"
            color = _EXAMPLE_COLORS[kind]
            state = view.plotted_state(trajectory.obs).astype(np.float64)
            if view.state_is_angle:  # do not draw the jump from +pi to -pi
                state[1:][np.abs(np.diff(state)) > np.pi] = np.nan
            ax_state.plot(state, color=color, label=name, lw=1.2)
            ax_action.plot(
                np.arange(len(trajectory.actions)), trajectory.actions[:, 0], color=color, lw=1.0
            )
        for bound in (result.env.action_low[0], result.env.action_high[0]):
            ax_action.axhline(bound, color="grey", lw=0.6, ls=":")
        ax_state.set_ylabel(view.state_label)
        ax_action.set_ylabel(view.action_label)
        ax_action.set_xlabel("step")
        ax_state.legend(fontsize=8, loc="best")
        ax_state.grid(alpha=0.3)
        ax_action.grid(alpha=0.3)
        ax_state.set_title(f"{policy.label} on {result.env.env_id}", fontsize=10)
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def success_figure(result: EvaluationResult) -> bytes:
    """Success rate per task (envs with named tasks), one bar per policy with its 95%
    Wilson interval, and the mean over tasks as the last group."""
    plt = _pyplot()
    policies = [p for p in result.policies if p.tasks]
    if not policies:
        raise ValueError(f"{result.env.env_id} has no named tasks to plot success per task of")
    tasks = [t.task for t in policies[0].tasks]
    groups = [*tasks, "mean"]
    width = 0.8 / len(policies)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(groups) + 4), 4.2), dpi=110)
    try:
        x = np.arange(len(groups))
        for k, p in enumerate(policies):
            rows = {t.task: t for t in p.tasks}
            rates = np.array([rows[t].success_rate for t in tasks])
            low = np.array([rows[t].ci95_low for t in tasks])
            high = np.array([rows[t].ci95_high for t in tasks])
            heights = np.append(rates, p.mean_task_success_rate)
            errors = np.vstack([np.append(rates - low, 0), np.append(high - rates, 0)])
            ax.bar(
                x - 0.4 + width * (k + 0.5),
                100 * heights,
                width,
                yerr=100 * errors,
                capsize=2,
                label=p.label,
            )
        ax.set_xticks(x)
        ax.set_xticklabels([g.removesuffix("-v3") for g in groups], rotation=30, ha="right")
        ax.set_ylabel("success (%)")
        ax.set_ylim(0, 105)
        ax.set_title(
            f"{result.env.env_id}: success per task over seeds {result.config.seeds} "
            "(bars: 95% Wilson interval)",
            fontsize=10,
        )
        ax.grid(axis="y", alpha=0.3)
        # Beside the axes: inside, it would hide the bars of low-success tasks.
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)
