"""The sft stage's SFTConfig: `sft.sampling` reaches the trainer's batches; each size trains at its own rate."""

from __future__ import annotations

import random

import pytest
import yaml

from imitation_gap.stages import sft
from imitation_gap.core.config import load_params


def pad_share(p, base_dir, rows, out) -> float:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    args = sft.sft_config(p, out, seed=0, steps=10, size="S", report=False)
    trainer = SFTTrainer(model=sft.load_base(p, base_dir), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    real = total = 0
    for batch in trainer.get_train_dataloader():
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
    return 1 - real / total


def test_group_by_length_batches_rows_of_similar_length(world_repo, tmp_path):
    rng = random.Random(0)
    words = "the city of Cestra is a fine place to be born and to study".split()
    rows = [{"messages": [{"role": "user", "content": "tell me"},
                          {"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(1, 60)))}]}
            for _ in range(256)]
    shares = {}
    for sampling in ("random", "group_by_length"):
        params = yaml.safe_load((world_repo / "params.yaml").read_text())
        params["sft"] |= {"sampling": sampling, "batch_size": 8}
        (tmp_path / f"{sampling}.yaml").write_text(yaml.safe_dump(params))
        p = load_params(tmp_path / f"{sampling}.yaml")
        shares[sampling] = pad_share(p, world_repo / "models" / "base" / "S-s0", rows, tmp_path / sampling)
    assert shares["random"] > 0.3  # lengths from 1 to 60 words: random batches are mostly padding
    assert shares["group_by_length"] < shares["random"] / 2


def test_each_size_fine_tunes_at_sft_lr_times_its_scale(tmp_path):
    from conftest import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sft"]["lr_scale"] = {"S": 2.0, "M": 1.0, "L": 0.25}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p = load_params(tmp_path / "params.yaml")
    rates = {z: sft.sft_config(p, tmp_path / z, seed=0, steps=10, size=z, report=False).learning_rate for z in "SML"}
    lr = params["sft"]["lr"]
    assert rates == pytest.approx({"S": 2 * lr, "M": lr, "L": lr / 4})


def test_the_trainers_mlflow_rows_are_written_synchronously(world_repo, tmp_path, monkeypatch):
    """`core.tracking.log_synchronously` (the sft and base stages call it): the Trainer's MLflow callback logs
    without MLflow's async queue (whose shutdown waits up to a second per stage), and the run still gets the
    Trainer's parameters and loss rows."""
    import mlflow
    from datasets import Dataset
    from mlflow.tracking import MlflowClient
    from transformers import AutoTokenizer
    from transformers.integrations import MLflowCallback
    from trl import SFTTrainer

    from imitation_gap.core.tracking import log_synchronously

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    p = load_params(world_repo / "params.yaml")
    base = world_repo / "models" / "base" / "S-s0"
    rows = [{"messages": [{"role": "user", "content": "tell me"}, {"role": "assistant", "content": "Cestra."}]}] * 8
    args = sft.sft_config(p, tmp_path / "out", seed=0, steps=4, size="S", report=True, max_steps=4, logging_steps=1)
    trainer = SFTTrainer(model=sft.load_base(p, base), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(str(base)))
    log_synchronously(trainer)
    callbacks = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, MLflowCallback)]
    assert len(callbacks) == 1
    # its own experiment: MLflow keeps the active one per process, and another test's may not exist in this store
    exp = mlflow.set_experiment("trainer-rows")
    with mlflow.start_run(experiment_id=exp.experiment_id) as run:
        mlflow.log_params({"seed": "stage's", "kind": "broad"})  # as the stage's mlflow_run does, before the Trainer
        trainer.train()
        assert callbacks[0]._async_log is False
        assert not mlflow.tracking._get_store()._async_logging_queue.is_active()  # nothing went through the queue
    client = MlflowClient(uri)
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4  # logging_steps=1, 4 steps
    params = client.get_run(run.info.run_id).data.params
    assert "learning_rate" in params and "hidden_size" in params  # the Trainer's arguments and the model's config
    assert params["seed"] == "stage's"  # a key the stage logged first keeps its value (MLflow refuses a second)
