"""Stage `sft@<size>-<kind>-<amount>-<seed>`: fine-tune a base LM on imitation data.

TRL's ``SFTTrainer`` on the chat rows of ``data/imitation/<kind>/<amount>.jsonl``, with
the loss on assistant tokens only (``assistant_only_loss``: the chat template marks them
with ``{% generation %}``).  With ``sft.lora.enabled`` it trains LoRA adapters through
peft and merges them on save, so every stage downstream loads a plain checkpoint.

Output: ``models/sft/<size>-<kind>-<amount>-s<seed>/`` (safetensors, tokenizer,
``train_stats.json``).

Scale (GPUs): ``sft.num_processes > 1`` re-launches this stage under ``accelerate launch
--config_file <sft.accelerate_config>`` (DDP, FSDP or DeepSpeed ZeRO-3 configs ship in
``configs/accelerate/``); ``sft.lora.load_in_4bit`` is QLoRA (bitsandbytes);
``sft.bf16``, ``sft.gradient_checkpointing``, ``sft.packing`` and ``sft.sampling`` (``group_by_length``)
are the usual switches.

Run: ``python -m imitation_gap.stages.sft --size L --kind broad --amount 8000 --seed 0``
(dvc: ``dvc repro sft@L-broad-8000-0``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..core.cli import run_cli
from ..core.config import Params, base_dir as base_path, chain_seed, check_cell, load_params, run_name
from ..core.divergence import check_finite
from ..core.errors import ConfigError, DataError
from ..core.io import atomic_dir, has_safetensors, read_jsonl, write_json
from ..core.tracking import log_metrics, log_synchronously, mlflow_run
from ..worlds import get_world

log = logging.getLogger("imitation_gap")


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `dvc repro imitate-dataset`, and check that its "
                                "amount is listed in grid.amounts")
    rows = read_jsonl(path)
    for i, r in enumerate(rows, 1):
        msgs = r.get("messages")
        if not (isinstance(msgs, list) and msgs and all(isinstance(m, dict) and m.get("role") in
                                                        ("user", "assistant", "system") and
                                                        isinstance(m.get("content"), str) for m in msgs)
                and any(m["role"] == "assistant" for m in msgs)):
            raise DataError(f"{path}:{i}: a row needs 'messages': a list of {{role, content}} with at least one "
                            "assistant turn (roles: system, user, assistant)")
    if not rows:
        raise DataError(f"{path} has no rows; raise the amount in grid.amounts")
    return rows


def check_max_seq_len(p: Params, tok, rows: list[dict], where: Path) -> None:
    """Stop before training if ``sft.max_seq_len`` cuts off every assistant token (the loss would have no
    token to learn from: TRL would fail deep inside with ``num_samples=0``)."""
    if not p.sft.assistant_only_loss:
        return
    first = None  # the earliest position of an assistant token over the rows
    for r in rows:
        enc = tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        mask = list(enc.get("assistant_masks") or [])
        if 1 not in mask:
            continue
        if mask.index(1) < p.sft.max_seq_len:
            return  # this row keeps assistant tokens: training has something to learn
        first = mask.index(1) if first is None else min(first, mask.index(1))
    if first is not None:
        raise ConfigError(f"{p.source}: sft.max_seq_len = {p.sft.max_seq_len}: too short to keep any assistant "
                          f"token of {where} (the earliest starts at token {first}, chat template included); "
                          f"raise sft.max_seq_len to more than {first}")


def distributed() -> tuple[int, int]:
    """(rank, world size) under ``accelerate launch`` / torchrun; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def output_dir(final: Path):
    """:func:`atomic_dir` for one process; with several, a shared staging dir that rank 0 moves."""
    rank, world = distributed()
    if world == 1:
        with atomic_dir(final) as tmp:
            yield tmp
        return
    stage = final.parent / f".{final.name}.ddp-partial"  # every rank must agree on the path
    if rank == 0:
        shutil.rmtree(stage, ignore_errors=True)
    yield stage
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(stage, final)


def load_base(p: Params, base_dir: Path):
    """The base checkpoint (safetensors; remote code only if hub.trust_remote_code), 4-bit for QLoRA."""
    from transformers import AutoModelForCausalLM

    kw: dict = {"use_safetensors": True} | get_world(p).load_kwargs()
    if p.sft.lora.load_in_4bit:
        import torch
        from transformers import BitsAndBytesConfig

        if not (p.sft.lora.enabled and torch.cuda.is_available()):
            raise ConfigError(f"{p.source}: sft.lora.load_in_4bit = true (QLoRA) needs sft.lora.enabled: true and a "
                              "CUDA GPU with bitsandbytes installed")
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_compute_dtype=torch.bfloat16,
                                                       bnb_4bit_use_double_quant=True)
    return AutoModelForCausalLM.from_pretrained(str(base_dir), **kw)


def sft_config(p: Params, output_dir: Path, seed: int, steps: float, *, size: str, report: bool = True, **overrides):
    """The stage's ``SFTConfig`` for one size (also timed by bench/): ``steps`` sets warm-up and logging."""
    import torch
    from trl import SFTConfig

    s = p.sft
    kw = dict(
        output_dir=str(output_dir), num_train_epochs=s.epochs, per_device_train_batch_size=s.batch_size,
        learning_rate=s.lr_for(size), lr_scheduler_type="cosine", warmup_steps=int(s.warmup_ratio * steps),
        logging_steps=max(1, int(steps) // 20), save_strategy="no", report_to=["mlflow"] if report else [],
        use_cpu=not torch.cuda.is_available(), seed=seed, data_seed=seed, max_length=s.max_seq_len,
        assistant_only_loss=s.assistant_only_loss, packing=s.packing, train_sampling_strategy=s.sampling, bf16=s.bf16,
        gradient_checkpointing=s.gradient_checkpointing, dataloader_num_workers=0,
    )
    return SFTConfig(**(kw | overrides))


def train(p: Params, size: str, base_dir: Path, rows: list[dict], seed: int, out_dir: Path, stage: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed
    from trl import SFTTrainer

    s = p.sft
    torch.set_num_threads(s.threads)
    set_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = load_base(p, base_dir)
    ds = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    rank, world = distributed()
    steps = math.ceil(len(ds) / (s.batch_size * world)) * s.epochs
    peft_config = None
    if s.lora.enabled:
        from peft import LoraConfig

        peft_config = LoraConfig(r=s.lora.r, lora_alpha=s.lora.alpha, lora_dropout=s.lora.dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    with output_dir(out_dir) as tmp:
        cfg = sft_config(p, tmp / "trainer", seed, steps, size=size, report=rank == 0)
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_config)
        log_synchronously(trainer)
        # the loss on (up to) 64 training rows before and after: did SFT start from a model that knows the
        # format and words (below ln(vocabulary)), and did it converge? (instrument checks in the report)
        probe = trainer.train_dataset.select(range(min(64, len(trainer.train_dataset))))
        initial_loss = trainer.evaluate(eval_dataset=probe, metric_key_prefix="initial")["initial_loss"]
        t0 = time.time()
        result = trainer.train()
        seconds = time.time() - t0
        final_loss = trainer.evaluate(eval_dataset=probe, metric_key_prefix="final")["final_loss"]
        check_finite(trainer.model, trainer.state.log_history, f"sft@{stage}", "sft.lr", s.lr)  # before any save
        if s.lora.enabled:
            model = trainer.model.merge_and_unload()
            if rank == 0:
                model.save_pretrained(str(tmp), safe_serialization=True)
        else:
            trainer.save_model(str(tmp))  # gathers FSDP / ZeRO-3 shards; writes on the main process only
        trainer.accelerator.wait_for_everyone()
        n_tokens = sum(r.get("n_tokens", 0) for r in rows)
        stats = {"run": stage, "rows": len(rows), "data_tokens": n_tokens, "train_loss": result.training_loss,
                 "initial_loss": initial_loss, "final_loss": final_loss, "vocab_size": len(tok),
                 "lr": s.lr_for(size), "epochs": s.epochs, "processes": world, "lora": s.lora.enabled}
        if rank == 0:
            shutil.rmtree(tmp / "trainer", ignore_errors=True)
            for junk in ("training_args.bin",):  # pickled args: not needed, and not safetensors
                (tmp / junk).unlink(missing_ok=True)
            tok.save_pretrained(str(tmp))
            # no timings in the output (they go to MLflow): the same weights give the same hash downstream
            write_json(tmp / "train_stats.json", stats)
    return stats | {"seconds": round(seconds, 1),
                    "tokens_per_second": round(n_tokens * s.epochs / max(seconds, 1e-9), 1)}


def relaunch(p: Params, argv: list[str]) -> None:
    """Run this stage again under ``accelerate launch`` with ``sft.num_processes`` processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", p.sft.accelerate_config,
           "--num_processes", str(p.sft.num_processes), "-m", "imitation_gap.stages.sft", *argv]
    log.info("sft: %s", " ".join(cmd))
    r = subprocess.run(cmd, env=os.environ | {"IMITATION_GAP_LAUNCHED": "1"})
    if r.returncode:
        sys.exit(r.returncode)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", required=True)
    ap.add_argument("--kind", required=True)
    ap.add_argument("--amount", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    p = load_params(args.params)
    check_cell(p, args.size, args.kind, args.amount)
    if p.sft.num_processes > 1 and not os.environ.get("IMITATION_GAP_LAUNCHED"):
        return relaunch(p, sys.argv[1:] if argv is None else argv)
    name = run_name(args.size, args.kind, args.amount, args.seed)
    rows = load_rows(Path("data/imitation") / args.kind / f"{args.amount}.jsonl")
    base_dir = base_path(args.size, args.seed)
    if not has_safetensors(base_dir):
        raise FileNotFoundError(f"{base_dir}/model.safetensors (or its shards) is missing: run "
                                f"`dvc repro base@{args.size}-{args.seed}`")
    seed = chain_seed(p.seed, args.seed)
    from transformers import AutoTokenizer

    check_max_seq_len(p, AutoTokenizer.from_pretrained(str(base_dir)), rows,
                      Path("data/imitation") / args.kind / f"{args.amount}.jsonl")
    if distributed()[0] > 0:  # a worker of accelerate launch: train, and leave tracking to rank 0
        train(p, args.size, base_dir, rows, seed, Path("models/sft") / name, name)
        return
    with mlflow_run(p, f"sft@{name}", {"size": args.size, "kind": args.kind, "amount": args.amount,
                                       "chain": args.seed, **p.section("sft")}):
        stats = train(p, args.size, base_dir, rows, seed, Path("models/sft") / name, name)
        log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    log.info("sft %s: %s", name, stats)


if __name__ == "__main__":
    run_cli(main)
