"""The report's figures (matplotlib, Agg) and ``plots/runs.csv`` for ``dvc plots``."""

from __future__ import annotations

from pathlib import Path

from ..core.config import Params
from ..core.io import write_text_atomic
from .render import label, task_title
from .stats import TASKS, metric_paths

PLOTS = Path("plots")


def plot(p: Params, agg: dict, paid: dict | None = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(exist_ok=True)
    files = []
    T, B, C = agg["teacher"], agg["base"], agg["cells"]
    colors = dict(zip(p.grid.sizes, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    amounts = sorted(p.grid.amounts)

    def err(s):
        if not s or s["lo"] != s["lo"]:
            return 0, 0
        return max(0.0, s["mean"] - s["lo"]), max(0.0, s["hi"] - s["mean"])

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(PLOTS / name, dpi=110)
        plt.close(fig)
        files.append(name)

    def rates_axis(ax, x, ticks: list[str], title: str, **tick_kw) -> None:
        """The y axis, ticks, legend and title of a bar chart of win + tie rates against the teacher."""
        ax.set_xticks(list(x), ticks, **tick_kw)
        ax.set_ylabel("win + tie rate against the teacher")
        ax.set_ylim(0, 1.05)
        ax.legend()
        ax.set_title(title)

    # capability vs amount (Figure 4 analogue)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, t in zip(axes, TASKS):
        key = f"capability.{t}"
        for s in p.grid.sizes:
            if key in B[s]:
                ax.axhline(B[s][key]["mean"], color=colors[s], ls=":", lw=1)
            for k, ls in (("broad", "-"), ("local", "--")):
                if k not in p.grid.kinds:
                    continue
                pts = [C[(s, k, a)].get(key) for a in amounts]
                if None in pts:  # a task this world skipped
                    continue
                ys = [x["mean"] for x in pts]
                e = list(zip(*[err(x) for x in pts]))
                ax.errorbar(amounts, ys, yerr=e, color=colors[s], ls=ls, marker="o", capsize=3, label=f"{s} {k}")
        if key in T:
            ax.axhline(T[key]["mean"], color="black", lw=1.5, label="teacher")
        ax.set_xscale("log")
        ax.set_xlabel("imitation tokens (dotted: base model)")
        ax.set_title(task_title(agg, t))
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("accuracy")
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle("Capability against imitation data (95% CI)")
    save(fig, "capability_vs_amount.png")

    # preference (Figure 1 analogue)
    models = [(f"{s} base", B[s]) for s in p.grid.sizes] + [(label(c), v) for c, v in C.items() if c[2] == amounts[-1]]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(models)), 4))
    x = range(len(models))
    for off, r, col in ((-0.2, "nonexpert", "tab:orange"), (0.2, "expert", "tab:blue")):
        vals = [m.get(f"preference.{r}") for _, m in models]
        ax.bar([i + off for i in x], [v["mean"] if v else 0 for v in vals], width=0.4, color=col,
               yerr=list(zip(*[err(v) for v in vals])), capsize=3, label=f"{r} rater")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    rates_axis(ax, x, [n for n, _ in models], "Blind pairwise preference against the teacher (95% CI)",
               rotation=45, ha="right", fontsize=8)
    save(fig, "preference.png")

    # style vs amount (Table 2 analogue)
    keys = ("teacher_style_rate", "authoritative_rate", "confident_wrong_rate", "fact_accuracy")
    keys = [k for k in keys if f"style.{k}" in T] or ["list_rate", "authoritative_rate"]  # hub: no world facts
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6), squeeze=False)
    axes = axes[0]
    for ax, sk in zip(axes, keys):
        key = f"style.{sk}"
        for s in p.grid.sizes:
            for k, ls in (("broad", "-"), ("local", "--")):
                if k not in p.grid.kinds:
                    continue
                pts = [B[s].get(key)] + [C[(s, k, a)].get(key) for a in amounts]
                if None in pts:
                    continue
                xs = [amounts[0] / 4] + amounts
                ax.errorbar(xs, [q["mean"] for q in pts], yerr=list(zip(*[err(q) for q in pts])), color=colors[s],
                            ls=ls, marker="o", capsize=3, label=f"{s} {k}")
        if key in T:
            ax.axhline(T[key]["mean"], color="black", lw=1.5, label="teacher")
        ax.set_xscale("log")
        ax.set_title(sk.replace("_", " "))
        ax.set_xlabel("imitation tokens (leftmost: base)")
        ax.set_ylim(-0.02, 1.02)
    axes[-1].legend(fontsize=7)
    save(fig, "style_vs_amount.png")

    # what raters reward: win-or-tie by kind of answer, per rater (the table under "What raters reward")
    from .render import CELLS

    raters = [(r, f) for r, f in (paid or {}).items() if f.get("cells")]
    if raters:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        x = range(len(CELLS))
        width = 0.8 / len(raters)
        for i, ((r, f), col) in enumerate(zip(raters, ("tab:orange", "tab:blue", "tab:green"))):
            cs = [f["cells"].get(k, {}) for k, _ in CELLS]
            ys = [c.get("rate", 0) if c.get("pairs") else 0 for c in cs]
            e = [(max(0.0, y - c.get("lo", y)), max(0.0, c.get("hi", y) - y)) if c.get("pairs") else (0, 0)
                 for y, c in zip(ys, cs)]
            ax.bar([j + (i - (len(raters) - 1) / 2) * width for j in x], ys, width=width, color=col,
                   yerr=list(zip(*e)), capsize=3, label=f"{r} rater")
        rates_axis(ax, x, [t for _, t in CELLS],
                   "What raters reward: every judged pair, by kind of answer (95% Wilson CI)", fontsize=8)
        save(fig, "rater_rewards.png")

    # CSV for `dvc plots`
    rows = ["model,size,kind,amount," + ",".join(n.replace(".", "_") for n, _, _ in metric_paths())]
    for s in p.grid.sizes:
        rows.append(",".join([f"{s}-base", s, "base", "0"] + [f"{B[s][n]['mean']:.4f}" if n in B[s] else ""
                                                                for n, _, _ in metric_paths()]))
    for (s, k, a), v in C.items():
        rows.append(",".join([f"{s}-{k}-{a}", s, k, str(a)] + [f"{v[n]['mean']:.4f}" if n in v else ""
                                                               for n, _, _ in metric_paths()]))
    write_text_atomic(PLOTS / "runs.csv", "\n".join(rows) + "\n")
    return files
