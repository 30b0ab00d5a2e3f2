"""Stage ``base@<size>`` of the embedded world: pretrain one Llama-architecture base LM on the world's corpus.

The corpus is packed into sequences of ``pretrain.seq_len`` tokens (documents joined by
``<eos>``) and trained with the Hugging Face ``Trainer`` (causal LM loss, cosine
schedule).  The model is saved as safetensors under ``models/base/<size>/`` with the
tokenizer, loadable by ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ...core.config import Params, Size, chain_seed
from ...core.divergence import check_finite
from ...core.inputs import require_tokenizer
from ...core.memory import check_fits, training_bytes
from ...core.io import atomic_dir, read_jsonl, write_json
from ...core.tracking import log_metrics, log_synchronously, mlflow_run

log = logging.getLogger("imitation_gap")

RAW = Path("data/raw")


def model_config(size: Size, tok, max_positions: int = 512):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok), hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers, num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_heads, max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )


def non_embedding_params(model) -> int:
    emb = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - emb


def packed_dataset(tok, docs: list[str], seq_len: int):
    from datasets import Dataset

    ids: list[int] = []
    for enc in tok(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc + [tok.eos_token_id])
    n = len(ids) // seq_len
    return Dataset.from_dict({"input_ids": [ids[i * seq_len:(i + 1) * seq_len] for i in range(n)]}), len(ids)


def make_trainer(p: Params, model, tok, ds, output_dir: Path, report_to: tuple[str, ...] = ("mlflow",), seed: int = 0,
                 lr: float | None = None):
    """The HF ``Trainer`` of the stage (also timed by ``bench/``): causal LM loss, cosine schedule."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    pt = p.pretrain
    targs = TrainingArguments(
        output_dir=str(output_dir), max_steps=pt.steps, per_device_train_batch_size=pt.batch_size,
        learning_rate=lr or p.sizes[p.grid.sizes[0]].lr, lr_scheduler_type="cosine", warmup_steps=pt.warmup_steps,
        weight_decay=pt.weight_decay, logging_steps=10, save_strategy="no", report_to=list(report_to),
        use_cpu=True, seed=seed, data_seed=seed, dataloader_num_workers=0, disable_tqdm=False,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=ds,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    log_synchronously(trainer)
    return trainer


def pretrain(p: Params, size_name: str, chain: int, out_dir: Path) -> dict:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM, set_seed

    pt = p.pretrain
    torch.set_num_threads(pt.threads)
    seed = chain_seed(p.seed, chain)
    set_seed(seed)
    require_tokenizer(RAW / "tokenizer")  # missing or torn: one line naming `dvc repro fetch`
    tok = AutoTokenizer.from_pretrained(str(RAW / "tokenizer"))
    docs = [r["text"] for r in read_jsonl(RAW / "corpus.jsonl")]
    ds, n_corpus = packed_dataset(tok, docs, pt.seq_len)
    sz = p.sizes[size_name]
    check_fits(f"base@{size_name}-{chain} (sizes.{size_name}: hidden {sz.hidden_size}, intermediate "
               f"{sz.intermediate_size}, {sz.num_layers} layers; pretrain.batch_size {pt.batch_size} x seq_len "
               f"{pt.seq_len})",
               *training_bytes(len(tok), sz.hidden_size, sz.intermediate_size, sz.num_layers, sz.num_heads,
                               pt.batch_size, pt.seq_len),
               f"lower sizes.{size_name} or pretrain.batch_size")  # before the model is built
    model = LlamaForCausalLM(model_config(sz, tok))
    n_params = non_embedding_params(model)
    log.info("base@%s: %d non-embedding params, %d corpus tokens, %d packed sequences", size_name, n_params,
             n_corpus, len(ds))
    stage = f"base@{size_name}-{chain}"
    with mlflow_run(p, stage, {"size": size_name, "chain": chain, **p.section("pretrain"),
                               "model": p.section("sizes").get(size_name, {})}):
        with atomic_dir(out_dir) as tmp:
            trainer = make_trainer(p, model, tok, ds, tmp / "trainer", seed=seed, lr=p.sizes[size_name].lr)
            t0 = time.time()
            result = trainer.train()
            seconds = time.time() - t0
            check_finite(model, trainer.state.log_history, stage, f"sizes.{size_name}.lr", p.sizes[size_name].lr)  # before anything is saved
            import shutil

            shutil.rmtree(tmp / "trainer", ignore_errors=True)
            model.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))
            tokens = pt.steps * pt.batch_size * pt.seq_len
            stats = {"size": size_name, "chain": chain, "seed": seed, "non_embedding_params": n_params, "train_loss": result.training_loss,
                     "train_tokens": tokens, "corpus_tokens": n_corpus}
            # timings go to MLflow and the log, not into the model's directory: a re-run that trains the same
            # weights leaves the output's hash, and so every stage downstream, unchanged
            write_json(tmp / "train_stats.json", stats)
        timing = {"seconds": round(seconds, 1), "tokens_per_second": round(tokens / seconds, 1)}
        log_metrics({k: v for k, v in stats.items() if k != "size"} | timing)
    log.info("base@%s: %s %s", size_name, stats, timing)
    return stats | timing
