"""Storage over pretraining steps: how fast each base size stores the held-out facts (the storage check's mechanism).

The storage check asks that a larger base store more of the held-out (group B) facts than a smaller
one.  Real LMs of more parameters learn a fact from fewer exposures; this diagnostic shows whether a
world's sizes do.  For each (size, chain) it re-runs the ``base@<size>-<chain>`` stage's pretraining
(same params, seed, data and ``Trainer``, so the same run) and, every ``--every`` steps, scores the
knowledge probe (``data/raw/eval/store.jsonl``): the share of items whose greedy next token after the
prompt is the answer.  Every answer is one token of the embedded world's tokenizer, so this is the
first token that the ``ig_store`` task's greedy generation writes; at the last step it matches the
stage's knowledge probe (``docs/miniature.md`` gives both).

Run in a checkout whose ``fetch`` stage has run (``dvc repro fetch`` or ``dvc pull``)::

    python -m imitation_gap.tools.storage_curve --sizes S M L --chains 0 1 2 --out docs/figures/storage_steps

It writes ``<out>.json`` (``{"<size>-<chain>": {"points": [[step, probe], ...], "train_loss": ...}}``; the
training loss is the stage's ``train_stats.json`` value, bit for bit, as the run is the same) and ``<out>.png``.  Nothing
is saved to ``models/``, MLflow or DVC: it is outside the pipeline and changes no stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..core.cli import setup_logging
from ..core.io import read_jsonl, write_text_atomic

log = logging.getLogger("imitation_gap")
RAW = Path("data/raw")


def probe_items(tok) -> tuple[list[list[int]], list[int]]:
    """The knowledge probe's prompts as token ids, and each answer's (single) token id."""
    items = read_jsonl(RAW / "eval" / "store.jsonl")
    prompts = [tok(it["prompt"], add_special_tokens=False)["input_ids"] for it in items]
    answers = []
    for it in items:
        ids = tok(" " + it["answer"], add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise SystemExit(f"storage_curve: the probe answer {it['answer']!r} is {len(ids)} tokens; this "
                             "diagnostic scores one-token answers (the embedded world's) only")
        answers.append(ids[0])
    return prompts, answers


def probe_score(model, prompts: list[list[int]], answers: list[int]) -> float:
    """Share of probe items whose greedy next token is the answer."""
    import torch

    was_training = model.training
    model.eval()
    right = 0
    with torch.no_grad():
        for ids, answer in zip(prompts, answers):
            right += int(model(torch.tensor([ids])).logits[0, -1].argmax().item() == answer)
    model.train(was_training)
    return right / len(answers)


def curve(params_path: str, size: str, chain: int, every: int) -> dict:
    """Pretrain ``size`` for ``chain`` exactly as the base stage does; the probe every ``every`` steps."""
    import tempfile

    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM, TrainerCallback, set_seed

    from ..core.config import chain_seed, load_params
    from ..worlds.embedded.pretrain import make_trainer, model_config, packed_dataset

    p = load_params(params_path)
    torch.set_num_threads(p.pretrain.threads)
    seed = chain_seed(p.seed, chain)
    set_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(RAW / "tokenizer"))
    ds, _ = packed_dataset(tok, [r["text"] for r in read_jsonl(RAW / "corpus.jsonl")], p.pretrain.seq_len)
    model = LlamaForCausalLM(model_config(p.sizes[size], tok))
    prompts, answers = probe_items(tok)
    points: list[list[float]] = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                points.append([state.global_step, probe_score(model, prompts, answers)])
                log.info("%s-%d: step %d, knowledge probe %.3f", size, chain, *points[-1])

    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(p, model, tok, ds, Path(tmp), report_to=(), seed=seed, lr=p.sizes[size].lr)
        trainer.add_callback(Probe())
        result = trainer.train()
    return {"points": points, "train_loss": result.training_loss}


def plot(curves: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    palette = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    colors: dict[str, str] = {}
    for key, run in curves.items():
        size = key.rsplit("-", 1)[0]
        new = size not in colors
        if new:
            colors[size] = next(palette)
        ax.plot([s for s, _ in run["points"]], [v for _, v in run["points"]], color=colors[size], alpha=0.8,
                label=size if new else None, marker=".")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("knowledge probe (held-out facts stored)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(title="size (one line per chain)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _one(job: tuple[str, str, int, int]) -> tuple[str, dict]:
    params_path, size, chain, every = job
    setup_logging()
    return f"{size}-{chain}", curve(params_path, size, chain, every)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["S", "M", "L"], help="keys of params.yaml: sizes")
    ap.add_argument("--chains", nargs="+", type=int, default=[0], help="replicated chains (grid.seeds values)")
    ap.add_argument("--every", type=int, default=100, help="probe every N optimizer steps (and at the last)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each uses pretrain.threads threads)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="docs/figures/storage_steps", help="writes OUT.json and OUT.png")
    a = ap.parse_args(argv)
    setup_logging()
    from ..core.config import load_params

    p = load_params(a.params)
    if p.world != "embedded":
        ap.error(f"world: {p.world!r}: this diagnostic pretrains the embedded world's bases; set world: embedded")
    unknown = [s for s in a.sizes if s not in p.sizes]
    if unknown:
        ap.error(f"--sizes: {unknown} not in params.yaml sizes (allowed: {sorted(p.sizes)})")
    if any(c < 0 for c in a.chains):
        ap.error(f"--chains: {a.chains}: chains are non-negative integers (grid.seeds: {list(p.grid.seeds)})")
    if a.every < 1 or a.jobs < 1:
        ap.error(f"--every {a.every} / --jobs {a.jobs}: both must be >= 1")
    missing = [f for f in ("corpus.jsonl", "tokenizer", "eval/store.jsonl") if not (RAW / f).exists()]
    if missing:
        ap.error(f"{RAW}/{missing[0]} is missing: run `dvc repro fetch` (or `dvc pull`) first")
    jobs = [(a.params, s, c, a.every) for s in a.sizes for c in a.chains]  # size by size: the JSON's order
    if a.jobs == 1:
        results = [_one(j) for j in jobs]
    else:
        with ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn")) as pool:
            results = list(pool.map(_one, jobs))
    curves = dict(results)  # in the jobs' order (pool.map keeps it)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out.with_suffix(".json"), json.dumps(curves, indent=1) + "\n")
    plot(curves, out.with_suffix(".png"))
    log.info("storage_curve: wrote %s and %s", out.with_suffix(".json"), out.with_suffix(".png"))


if __name__ == "__main__":
    main(sys.argv[1:])
