"""Training throughput: the project's Trainer / SFTTrainer against a minimal raw PyTorch loop.

Method (stated again in BENCHMARKS.md): every measurement builds a fresh model of the
size's config, runs ``warmup`` optimizer steps that are not timed, then ``steps`` timed
steps; tokens/s = tokens of the timed steps / their wall time (``time.perf_counter`` at
the end of each step, so data loading, logging and callbacks between steps count).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

from .common import median, say

WARMUP = 3
STEPS = {"S": 16, "M": 12, "L": 6}  # timed steps per repetition (>= ~2 s each on this machine at 1 thread)


def matmul_peak(threads: int, reps: int = 5, sizes=(1024, 2048)) -> dict:
    """fp32 torch.matmul of n x n matrices at ``threads`` threads: 2 n^3 FLOP per product."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        out[n] = [2 * n ** 3 / t for t in times]
    best = max(out, key=lambda n: median(out[n]))
    return {"threads": threads, "by_n": {str(n): median(v) for n, v in out.items()}, "n": best,
            "flops": median(out[best]), "reps": reps}


def flops_per_token(model, seq: float) -> dict:
    """6 N per token (forward + backward) plus attention, 12 * layers * seq * hidden.

    N = non-embedding parameters + the output projection (vocab x hidden: tied to the input
    embedding, but its matmul is real work), the input embedding lookup excluded.
    """
    cfg = model.config
    emb = model.get_input_embeddings().weight.numel()
    n_nonemb = sum(p.numel() for p in model.parameters()) - emb
    n = n_nonemb + cfg.vocab_size * cfg.hidden_size
    attn = 12 * cfg.num_hidden_layers * seq * cfg.hidden_size
    return {"N": n, "non_embedding": n_nonemb, "per_token": 6 * n + attn, "attention_per_token": attn}


class _Clock:
    """Trainer callback: a timestamp at the end of every optimizer step; stops after ``stop`` steps."""

    def __new__(cls, stop: int):
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def __init__(self):
                self.t: list[float] = []

            def on_step_end(self, args, state, control, **kw):
                self.t.append(time.perf_counter())
                if len(self.t) >= stop:
                    control.should_training_stop = True

        return Clock()


class _Recorder:
    """Wraps a data collator: records (tokens in the batch, non-pad tokens) of every batch."""

    def __init__(self, collate, pad_id: int):
        self.collate, self.pad_id, self.batches = collate, pad_id, []

    def __call__(self, features):
        b = self.collate(features)
        ids = b["input_ids"]
        real = int(b["attention_mask"].sum()) if "attention_mask" in b else int((ids != self.pad_id).sum())
        self.batches.append((ids.numel(), real, ids.shape[-1]))
        return b


def _timed(clock_t: list[float], batches: list[tuple]) -> dict:
    """tokens/s over the timed steps (after WARMUP)."""
    steps = len(clock_t) - WARMUP
    if steps < 1:
        raise RuntimeError(f"only {len(clock_t)} optimizer steps ran (need {WARMUP} warm-up + timed ones): "
                           "more data or a smaller batch")
    dt = clock_t[-1] - clock_t[WARMUP - 1]
    timed = batches[WARMUP:WARMUP + steps]
    tok = sum(b[0] for b in timed)
    real = sum(b[1] for b in timed)
    seq = sum(b[2] for b in timed) / max(1, len(timed))
    return {"steps": steps, "seconds": dt, "tokens_per_s": tok / dt, "real_tokens_per_s": real / dt,
            "mean_seq": seq, "pad_share": 1 - real / max(1, tok)}


def _take(loader, n: int) -> list:
    """The first ``n`` batches of a data loader, epoch after epoch (as the Trainer sees them)."""
    out: list = []
    while len(out) < n:
        for b in loader:
            out.append(b)
            if len(out) == n:
                break
    return out


def _raw_loop(model, batches: list[dict], lr: float, wd: float) -> list[float]:
    """The baseline: forward, loss, backward, AdamW step, zero_grad. Nothing else."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    model.train()
    t = []
    for b in batches:
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
    return t


# -- pretraining ---------------------------------------------------------------------
def bench_pretrain(world: Path, p, sizes: list[str], reps: int, steps: dict) -> dict:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM, set_seed

    from imitation_gap.worlds.embedded import pretrain as base
    from imitation_gap.core.io import read_jsonl

    pt = p.pretrain
    torch.set_num_threads(pt.threads)
    tok = AutoTokenizer.from_pretrained(str(world / "data/raw/tokenizer"))
    docs = [r["text"] for r in read_jsonl(world / "data/raw/corpus.jsonl")]
    ds, _ = base.packed_dataset(tok, docs, pt.seq_len)
    data = torch.tensor(ds["input_ids"])
    out = {}
    for size in sizes:
        k = steps[size]
        res = {"trainer": [], "raw": []}
        for rep in range(reps):
            say(f"train: pretrain {size} rep {rep + 1}/{reps} (Trainer, raw loop; {WARMUP}+{k} steps each)")
            set_seed(rep)
            model = LlamaForCausalLM(base.model_config(p.sizes[size], tok))
            with tempfile.TemporaryDirectory() as tmp:
                trainer = base.make_trainer(p, model, tok, ds, Path(tmp) / "trainer", lr=p.sizes[size].lr)
                clock = _Clock(WARMUP + k)
                trainer.add_callback(clock)
                rec = _Recorder(trainer.data_collator, tok.pad_token_id)
                trainer.data_collator = rec
                trainer.train()
                res["trainer"].append(_timed(clock.t, rec.batches))
            set_seed(rep)
            model = LlamaForCausalLM(base.model_config(p.sizes[size], tok))
            g = torch.Generator().manual_seed(rep)
            idx = torch.randperm(len(data), generator=g)[:(WARMUP + k) * pt.batch_size].view(WARMUP + k, -1)
            batches = [{"input_ids": data[i], "labels": data[i]} for i in idx]
            t = _raw_loop(model, batches, p.sizes[size].lr, pt.weight_decay)
            shape = [(pt.batch_size * pt.seq_len, pt.batch_size * pt.seq_len, pt.seq_len)] * len(batches)
            res["raw"].append(_timed(t, shape))
        fl = flops_per_token(model, pt.seq_len)
        out[size] = {"runs": res, "flops": fl, "batch": pt.batch_size, "seq_len": pt.seq_len,
                     "trainer_tps": median(r["tokens_per_s"] for r in res["trainer"]),
                     "raw_tps": median(r["tokens_per_s"] for r in res["raw"])}
        out[size]["ratio"] = out[size]["trainer_tps"] / out[size]["raw_tps"]
        say(f"train: pretrain {size}: Trainer {out[size]['trainer_tps']:.0f} tok/s, raw "
            f"{out[size]['raw_tps']:.0f} tok/s, ratio {out[size]['ratio']:.2f}")
    return out


# -- SFT -----------------------------------------------------------------------------
def sft_config(p, output_dir: Path, seed: int, steps: int, packing: bool, size: str, **overrides):
    """The stage's own SFTConfig (``imitation_gap.stages.sft.sft_config``) of ``size``, packing switched as asked."""
    from imitation_gap.stages.sft import sft_config as stage_config

    return stage_config(p, output_dir, seed, steps, size=size, packing=packing, **overrides)


def sft_data(world: Path, kind: str, amount: int):
    """(tokenizer, rows, chat Dataset) of the imitation data ``kind``/``amount``, as the sft stage builds them."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from imitation_gap.core.io import read_jsonl

    tok = AutoTokenizer.from_pretrained(str(world / "data/raw/tokenizer"))
    rows = read_jsonl(world / f"data/imitation/{kind}/{amount}.jsonl")
    return tok, rows, Dataset.from_list([{"messages": r["messages"]} for r in rows])


def padding_stats(world: Path, p, kinds: list[str], amount: int, sampling: str = "random") -> dict:
    """Share of pad tokens over one epoch of SFT batches (the SFTTrainer's own collator), per kind."""
    from transformers import LlamaForCausalLM
    from trl import SFTTrainer

    from imitation_gap.worlds.embedded import pretrain as base

    out = {}
    for kind in kinds:
        tok, rows, ds = sft_data(world, kind, amount)
        steps = math.ceil(len(ds) / p.sft.batch_size) * p.sft.epochs
        model = LlamaForCausalLM(base.model_config(p.sizes["S"], tok))
        with tempfile.TemporaryDirectory() as tmp:
            cfg = sft_config(p, Path(tmp), 0, steps, False, "S", train_sampling_strategy=sampling)
            tr = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
            tot = real = 0
            lens = []
            for b in tr.get_train_dataloader():
                tot += b["input_ids"].numel()
                real += int(b["attention_mask"].sum())
                lens.append(b["input_ids"].shape[1])
            assist = sum(int((b["labels"] != -100).sum()) for b in tr.get_train_dataloader())
        out[kind] = {"rows": len(rows), "tokens": tot, "real": real, "pad_share": 1 - real / tot,
                     "loss_token_share": assist / real, "mean_padded_len": sum(lens) / len(lens)}
    return out


def bench_sft(world: Path, p, sizes: list[str], reps: int, steps: dict, kind: str, amount: int) -> dict:
    import torch
    from transformers import LlamaForCausalLM, set_seed
    from trl import SFTTrainer

    from imitation_gap.worlds.embedded import pretrain as base

    s = p.sft
    torch.set_num_threads(s.threads)
    tok, rows, ds = sft_data(world, kind, amount)
    n_steps = math.ceil(len(ds) / s.batch_size) * s.epochs
    out = {}
    for size in sizes:
        k = steps[size]
        res = {"sfttrainer": [], "raw": [], "packed": [], "init_s": []}
        for rep in range(reps):
            say(f"train: sft {size} rep {rep + 1}/{reps} (SFTTrainer, raw loop, packing; {WARMUP}+{k} steps)")
            timed_batches = None
            # packing: one repetition per size (a comparison of ~2x, not a ratio near 1; it saves ~2 min)
            for variant in ("sfttrainer", "packed") if rep == 0 else ("sfttrainer",):
                set_seed(rep)
                model = LlamaForCausalLM(base.model_config(p.sizes[size], tok))
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    cfg = sft_config(p, Path(tmp), rep, n_steps, variant == "packed", size)
                    # enough steps whatever the data size (packing makes fewer, longer rows); the clock stops
                    # the run after WARMUP + k steps anyway
                    # packed rows are ~10x longer: half the timed steps (still >= 3) keep its time in check
                    kv = k if variant == "sfttrainer" else max(3, k // 2)
                    cfg.max_steps = WARMUP + kv + 1
                    tr = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
                    if variant == "sfttrainer":
                        res["init_s"].append(time.perf_counter() - t0)
                        timed_batches = _take(tr.get_train_dataloader(), WARMUP + k)
                    clock = _Clock(WARMUP + kv)
                    tr.add_callback(clock)
                    rec = _Recorder(tr.data_collator, tok.pad_token_id)
                    tr.data_collator = rec
                    tr.train()
                    res[variant].append(_timed(clock.t, rec.batches))
            set_seed(rep)
            model = LlamaForCausalLM(base.model_config(p.sizes[size], tok))
            keep = ("input_ids", "attention_mask", "labels", "position_ids")
            batches = [{k2: v for k2, v in b.items() if k2 in keep} for b in timed_batches]
            t = _raw_loop(model, batches, s.lr_for(size), 0.0)
            shapes = [(b["input_ids"].numel(), int(b["attention_mask"].sum()), b["input_ids"].shape[1])
                      for b in batches]
            res["raw"].append(_timed(t, shapes))
        seq = median(r["mean_seq"] for r in res["sfttrainer"])
        o = {"runs": res, "flops": flops_per_token(model, seq), "batch": s.batch_size, "max_len": s.max_seq_len}
        for v in ("sfttrainer", "raw", "packed"):
            o[f"{v}_tps"] = median(r["tokens_per_s"] for r in res[v])
            o[f"{v}_real_tps"] = median(r["real_tokens_per_s"] for r in res[v])
            o[f"{v}_pad_share"] = median(r["pad_share"] for r in res[v])
        o["ratio"] = o["sfttrainer_tps"] / o["raw_tps"]
        o["packing_gain_real"] = o["packed_real_tps"] / o["sfttrainer_real_tps"]
        o["init_s"] = median(res["init_s"])
        out[size] = o
        say(f"train: sft {size}: SFTTrainer {o['sfttrainer_tps']:.0f} tok/s, raw {o['raw_tps']:.0f}, ratio "
            f"{o['ratio']:.2f}; real tok/s packed/unpacked {o['packing_gain_real']:.2f}x")
    return out


def bench_sampling(world: Path, p, size: str, kind: str, amount: int, reps: int) -> dict:
    """One epoch of the stage's SFTTrainer on ``kind`` data, ``sft.sampling`` random against group_by_length.

    Whole epochs (not a few steps): grouped batches run from long to short inside each mega-batch, so a few
    timed steps would not be a fair sample of them. Also the epoch's mean training loss, which the different
    batch mix changes (the loss of a batch is a mean over its tokens, and a batch of short rows counts as
    much as one of long rows)."""
    import torch
    from transformers import LlamaForCausalLM, set_seed
    from trl import SFTTrainer

    from imitation_gap.worlds.embedded import pretrain as base

    torch.set_num_threads(p.sft.threads)
    tok, rows, ds = sft_data(world, kind, amount)
    n_steps = math.ceil(len(ds) / p.sft.batch_size)
    out: dict = {"size": size, "kind": kind, "amount": amount, "steps": n_steps}
    for sampling in ("random", "group_by_length"):
        runs = []
        for rep in range(reps):
            say(f"train: sft sampling={sampling} {size} rep {rep + 1}/{reps} (one epoch, {n_steps} steps)")
            set_seed(rep)
            model = LlamaForCausalLM(base.model_config(p.sizes[size], tok))
            with tempfile.TemporaryDirectory() as tmp:
                cfg = sft_config(p, Path(tmp), rep, n_steps, False, size, train_sampling_strategy=sampling,
                                 num_train_epochs=1, report_to=[])
                tr = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
                rec = _Recorder(tr.data_collator, tok.pad_token_id)
                tr.data_collator = rec
                t = time.perf_counter()
                result = tr.train()
                dt = time.perf_counter() - t
            real = sum(b[1] for b in rec.batches)
            runs.append({"seconds": dt, "real_tokens_per_s": real / dt, "train_loss": result.training_loss,
                         "pad_share": 1 - real / sum(b[0] for b in rec.batches)})
        out[sampling] = {"runs": runs, **{k: median(r[k] for r in runs) for k in runs[0]}}
    out["speedup"] = out["random"]["seconds"] / out["group_by_length"]["seconds"]
    say(f"train: sft sampling: group_by_length {out['speedup']:.2f}x the speed of random on {size} {kind}")
    return out


def run(world: Path, p, sizes: list[str], reps: int, quick: bool = False) -> dict:
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{world / 'mlflow.db'}"  # the stages log to MLflow: so do we
    steps = {k: (2 if quick else v) for k, v in STEPS.items()}
    say("train: fp32 matmul peak")
    peak = matmul_peak(p.pretrain.threads, reps=3 if quick else 5, sizes=(256,) if quick else (1024, 2048))
    say(f"train: peak {peak['flops'] / 1e9:.1f} GFLOP/s at {peak['threads']} threads (n={peak['n']})")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores != p.pretrain.threads:  # the whole machine, for scale (make run: one thread per stage, 2 stages)
        peak["machine"] = matmul_peak(cores, reps=3 if quick else 5, sizes=(256,) if quick else (2048,))
    pre = bench_pretrain(world, p, sizes, reps, steps)
    amount = max(p.grid.amounts)
    pad = padding_stats(world, p, list(p.grid.kinds), amount)
    for kind, d in padding_stats(world, p, list(p.grid.kinds), amount, sampling="group_by_length").items():
        pad[kind]["grouped_pad_share"] = d["pad_share"]
    sft = bench_sft(world, p, sizes, reps, steps, "broad", amount)
    sampling = bench_sampling(world, p, sizes[0] if quick else "M", "broad", amount, reps)
    for d in list(pre.values()) + list(sft.values()):
        tps = d.get("trainer_tps") or d.get("sfttrainer_tps")
        d["pct_peak"] = tps * d["flops"]["per_token"] / peak["flops"]
        d["raw_pct_peak"] = d["raw_tps"] * d["flops"]["per_token"] / peak["flops"]
    return {"peak": peak, "pretrain": pre, "sft": sft, "padding": pad, "sampling": sampling,
            "sft_data": {"kind": "broad", "amount": amount},
            "warmup_steps": WARMUP, "timed_steps": steps}
