"""Stage `sft@<size>-<kind>-<amount>-<seed>`: fine-tune a base LM on imitation data.

TRL's ``SFTTrainer`` on the chat rows of ``data/imitation/<kind>/<amount>.jsonl``, with
the loss on assistant tokens only (``assistant_only_loss``: the chat template marks them
with ``{% generation %}``).  With ``sft.lora.enabled`` it trains LoRA adapters through
peft and merges them on save, so every stage downstream loads a plain checkpoint.

Output: ``models/sft/<size>-<kind>-<amount>-s<seed>/`` (safetensors, tokenizer,
``train_stats.json``).

Run: ``python -m imitation_gap.sft --size L --kind broad --amount 8000 --seed 0``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

from .common import atomic_dir, log, log_metrics, mlflow_run, read_jsonl, run_cli, write_json
from .config import DataError, Params, check_cell, load_params, run_name


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


def train(p: Params, base_dir: Path, rows: list[dict], seed: int, out_dir: Path, stage: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    s = p.sft
    torch.set_num_threads(s.threads)
    set_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))  # safetensors; no remote code
    ds = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    steps = math.ceil(len(ds) / s.batch_size) * s.epochs
    peft_config = None
    if s.lora.enabled:
        from peft import LoraConfig

        peft_config = LoraConfig(r=s.lora.r, lora_alpha=s.lora.alpha, lora_dropout=s.lora.dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    with atomic_dir(out_dir) as tmp:
        cfg = SFTConfig(
            output_dir=str(tmp / "trainer"), num_train_epochs=s.epochs, per_device_train_batch_size=s.batch_size,
            learning_rate=s.lr, lr_scheduler_type="cosine", warmup_steps=int(s.warmup_ratio * steps),
            logging_steps=max(1, int(steps) // 20), save_strategy="no", report_to=["mlflow"], use_cpu=True,
            seed=seed, data_seed=seed, max_length=s.max_seq_len, assistant_only_loss=s.assistant_only_loss,
            packing=s.packing, bf16=s.bf16, gradient_checkpointing=s.gradient_checkpointing,
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_config)
        t0 = time.time()
        result = trainer.train()
        seconds = time.time() - t0
        model = trainer.model
        if s.lora.enabled:
            model = model.merge_and_unload()
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        n_tokens = sum(r.get("n_tokens", 0) for r in rows)
        stats = {"run": stage, "rows": len(rows), "data_tokens": n_tokens, "train_loss": result.training_loss,
                 "epochs": s.epochs, "seconds": round(seconds, 1),
                 "tokens_per_second": round(n_tokens * s.epochs / max(seconds, 1e-9), 1), "lora": s.lora.enabled}
        write_json(tmp / "train_stats.json", stats)
    return stats


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
    name = run_name(args.size, args.kind, args.amount, args.seed)
    rows = load_rows(Path("data/imitation") / args.kind / f"{args.amount}.jsonl")
    base_dir = Path("models/base") / args.size
    if not (base_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"{base_dir}/model.safetensors is missing: run `dvc repro base@{args.size}`")
    with mlflow_run(p, f"sft@{name}", {"size": args.size, "kind": args.kind, "amount": args.amount,
                                       "seed": args.seed, **p.section("sft")}):
        stats = train(p, base_dir, rows, args.seed, Path("models/sft") / name, name)
        log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    log.info("sft %s: %s", name, stats)


if __name__ == "__main__":
    run_cli(main)
