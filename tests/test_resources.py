"""Per-stage resources (runner/resources.py), GPU assignment by the local runner, and the hub recipe.

The GPU test gives ``python -m imitation_gap.runner.parallel`` four fake GPUs (``--gpus 0,1,2,3``) and a
pipeline of script stages named like the study's, needing 2 (``sft@...``, ``sft.num_processes: 2``),
1 (``eval-sft@...``) and 0 GPUs (``fetch``, ``report``).  Each stage records the
``CUDA_VISIBLE_DEVICES`` it got and when it ran; no two stages that overlap in time may share a GPU,
and no moment may have more than four GPUs in use.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run
from imitation_gap.core.config import load_params, resolve_raw
from imitation_gap.runner import resources
from imitation_gap.runner.resources import GpuPool, Needs, needs

RECORD = '''
import json, os, sys, time
from pathlib import Path
name = sys.argv[1]
t0 = time.time()
time.sleep(float(sys.argv[2]))
Path("out").mkdir(exist_ok=True)
Path(f"out/{name}").write_text(json.dumps({"gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": t0,
                                           "end": time.time()}))
'''


def test_needs_by_stage_name_and_params():
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert needs("fetch", p) == Needs(0, 1)
    assert needs("imitate-dataset", p) == Needs(0, 1)
    assert needs("report", p) == Needs(0, 1)
    assert needs("base@M", p).gpus == 1 and needs("base@M-s1", p).gpus == 1  # embedded: pretraining
    assert needs("sft@M-local-1000-0", p) == Needs(1, 1)
    assert needs("eval-teacher", p).gpus == 0
    assert needs("eval-base@M-s0", p) == Needs(1, 1) and needs("eval-sft@M-local-1000-0", p).gpus == 1
    hub = resolve_raw(p | {"world": "hub"})
    hub["sft"] = hub["sft"] | {"num_processes": 8, "threads": 2}
    hub["hub"] = hub["hub"] | {"backend": "vllm", "vllm": {"tensor_parallel_size": 2}}
    assert needs("base@L", hub).gpus == 0  # a download
    assert needs("sft@L-broad-150000000-0", hub) == Needs(8, 16)
    assert needs("eval-sft@L-broad-150000000-0", hub) == Needs(2, 2)
    assert needs("eval-teacher", hub).gpus == 0


def test_gpu_pool_hands_out_disjoint_sets_and_none_without_gpus():
    pool = GpuPool(["0", "1", "2", "3"])
    a, b = pool.take(2), pool.take(1)
    assert a == ["0", "1"] and b == ["2"] and pool.take(2) is None and pool.take(0) == []
    pool.give_back(a)
    assert pool.take(2) == ["0", "1"] and pool.env(["3"]) == {"CUDA_VISIBLE_DEVICES": "3"}
    assert pool.env([]) == {"CUDA_VISIBLE_DEVICES": ""}  # a CPU stage on a GPU machine sees no GPU
    assert not pool.fits(5) and pool.fits(4)
    none = GpuPool([])
    assert none.take(8) == [] and none.env([]) == {} and none.fits(8)  # no GPU: as before, everything on CPU
    assert resources.visible_gpus("0,1,2,3") == ["0", "1", "2", "3"] and resources.visible_gpus("none") == []


@pytest.fixture
def gpu_dag(tmp_path: Path) -> Path:
    repo = tmp_path / "gpus"
    repo.mkdir()
    (repo / "record.py").write_text(RECORD)
    cells = ["a", "b", "c"]
    st = {"fetch": {"cmd": "python record.py fetch 0.3", "deps": ["record.py"], "outs": ["out/fetch"]}}
    # (prep: long enough to overlap an sft even when DVC is slow to start stages)
    for stage, secs, dep in (("sft", 2, "out/fetch"), ("eval-sft", 1.5, "out/sft@${item}"), ("prep", 4, None)):
        st[stage] = {"foreach": cells, "do": {"cmd": f"python record.py {stage}@${{item}} {secs}",
                                              "deps": ["record.py", *([dep] if dep else [])],
                                              "outs": [f"out/{stage}@${{item}}"]}}
    st["report"] = {"cmd": "python record.py report 0.2", "deps": ["record.py"] + [f"out/eval-sft@{c}" for c in cells],
                    "outs": ["out/report"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": st}, sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump({"world": "embedded", "sft": {"num_processes": 2, "threads": 1}}))
    run("git init -q -b main && git config user.email t@t && git config user.name t && dvc init -q && "
        "git add -A && git commit -qm init", repo)
    return repo


def test_local_runner_gives_each_stage_its_own_gpus(gpu_dag):
    r = run([sys.executable, "-m", "imitation_gap.runner.parallel", "--no-warm", "--jobs", "8", "--cpus", "16",
             "--gpus", "0,1,2,3"],
            gpu_dag)
    got = {p.name: json.loads(p.read_text()) for p in (gpu_dag / "out").iterdir() if not p.name.startswith(".")}
    assert len(got) == 11, r.stderr
    want = {"fetch": 0, "report": 0, **{f"prep@{c}": 0 for c in "abc"}, **{f"sft@{c}": 2 for c in "abc"},
            **{f"eval-sft@{c}": 1 for c in "abc"}}
    for name, rec in got.items():
        ids = [g for g in rec["gpus"].split(",") if g]
        assert len(ids) == want[name], (name, rec)
        assert set(ids) <= {"0", "1", "2", "3"}
        rec["ids"] = set(ids)
    names = sorted(got)
    for i, a in enumerate(names):  # stages that ran at the same time never share a GPU
        for b in names[i + 1:]:
            x, y = got[a], got[b]
            if x["start"] < y["end"] and y["start"] < x["end"]:
                assert not (x["ids"] & y["ids"]), (a, x, b, y)
    for t in sorted(r["start"] for r in got.values()):  # never more than 4 GPUs in use
        assert sum(len(r["ids"]) for r in got.values() if r["start"] <= t < r["end"]) <= 4
    # GPU stages did run side by side (at least 3 GPUs busy at once), and CPU stages beside them
    peak = max(sum(len(r["ids"]) for r in got.values() if r["start"] <= t < r["end"])
               for t in (r["start"] for r in got.values()))
    assert peak >= 3
    assert any(got[p]["start"] < got[s]["end"] and got[s]["start"] < got[p]["end"]
               for p in got if p.startswith("prep@") for s in got if s.startswith("sft@"))
    assert "up to date" in run(["dvc", "status"], gpu_dag).stdout


def test_a_stage_needing_more_gpus_than_exist_is_a_clear_error(gpu_dag):
    r = run([sys.executable, "-m", "imitation_gap.runner.parallel", "--no-warm", "--gpus", "0", "sft@a"], gpu_dag,
            check=False)
    assert r.returncode == 2 and "needs 2 GPUs" in r.stderr and "--gpus" in r.stderr


def test_world_hub_alone_gives_the_hub_recipe(tmp_path):
    """`-S world=hub` is the only change: SFT and eval take the hub recipe (LLaMA-class values)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["world"] = "hub"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p = load_params(tmp_path / "params.yaml")
    assert (p.sft.lr, p.sft.epochs, p.sft.batch_size, p.sft.max_seq_len) == (2e-5, 3, 4, 2048)
    assert (p.sft.lr_for("M"), p.sft.lr_for("L")) == (2e-5, 1e-5)  # Alpaca's rates for LLaMA 7B and 13B
    assert p.sft.bf16 and p.sft.gradient_checkpointing and p.sft.warmup_ratio == 0.03
    assert (p.eval.batch_size, p.eval.pref_max_new_tokens) == (8, 512)
    assert p.teacher.model == "gpt-3.5-turbo" and p.eval.judge.expert_model == "gpt-4o"
    # the rest of `sft` applies to both worlds; the embedded world keeps its own values
    assert p.sft.lora == load_params(ROOT / "params.yaml").sft.lora
    emb = load_params(ROOT / "params.yaml")
    assert (emb.sft.lr, emb.sft.max_seq_len, emb.sft.bf16) == (2e-4, 192, False)
    # MLflow logs the effective values; the runner's plain mapping agrees with the typed params
    assert p.section("sft")["lr"] == 2e-5
    raw = resolve_raw(params)
    assert raw["sft"]["max_seq_len"] == 2048 and raw["eval"]["pref_max_new_tokens"] == 512
    # and dvc.yaml makes the recipe a param of the stages that read it
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "hub.sft" in dvc["sft"]["params"] and "hub.eval" in dvc["eval-sft"]["params"]
