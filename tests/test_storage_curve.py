"""The storage-over-steps diagnostic (``python -m imitation_gap.tools.storage_curve``) on the tiny world."""

from __future__ import annotations

import json
import shutil
import sys

from conftest import run


def test_the_curve_retraces_the_base_stage_and_scores_its_model(world_repo, tmp_path, monkeypatch):
    out = tmp_path / "curve"
    run([sys.executable, "-m", "imitation_gap.tools.storage_curve", "--sizes", "S", "--chains", "0",
         "--every", "3", "--out", str(out)], world_repo)
    curves = json.loads(out.with_suffix(".json").read_text())
    assert list(curves) == ["S-0"]
    points = curves["S-0"]["points"]
    assert [s for s, _ in points] == [3, 6, 8]  # every 3 steps, and the last (tiny params: 8 steps)
    assert all(0.0 <= v <= 1.0 for _, v in points)
    assert out.with_suffix(".png").stat().st_size > 1000
    # the same run as base@S-0: the same mean training loss, bit for bit, and its last point is the stage's model
    stats = json.loads((world_repo / "models" / "base" / "S-s0" / "train_stats.json").read_text())
    assert curves["S-0"]["train_loss"] == stats["train_loss"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from imitation_gap.tools.storage_curve import probe_items, probe_score

    monkeypatch.chdir(world_repo)
    tok = AutoTokenizer.from_pretrained("data/raw/tokenizer")
    model = AutoModelForCausalLM.from_pretrained("models/base/S-s0")
    assert probe_score(model, *probe_items(tok)) == points[-1][1]


def test_bad_arguments_name_the_fix_and_write_nothing(world_repo, tmp_path):
    out = tmp_path / "curve"
    cmd = [sys.executable, "-m", "imitation_gap.tools.storage_curve", "--out", str(out)]
    r = run(cmd + ["--sizes", "XL"], world_repo, check=False)
    assert r.returncode == 2 and "--sizes: ['XL'] not in params.yaml sizes (allowed: ['L', 'M', 'S'])" in r.stderr
    r = run(cmd + ["--every", "0"], world_repo, check=False)
    assert r.returncode == 2 and "must be >= 1" in r.stderr
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(world_repo / "params.yaml", bare / "params.yaml")
    r = run(cmd, bare, check=False)
    assert r.returncode == 2 and "data/raw/corpus.jsonl is missing: run `dvc repro fetch`" in r.stderr
    assert not out.with_suffix(".json").exists() and not out.with_suffix(".png").exists()
