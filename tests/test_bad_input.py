"""Bad params and bad data stop a stage at once, name the key, the value and what is allowed."""

from __future__ import annotations

import json
import socket
import sys

import pytest
import yaml

from conftest import ROOT, run
from imitation_gap.core.config import load_params
from imitation_gap.core.errors import ConfigError


def params_with(tmp_path, **edits) -> str:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in edits.items():
        d = params
        *path, last = dotted.split(".")
        for k in path:
            d = d[k]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    return str(f)


@pytest.mark.parametrize("edit, expected", [
    ({"grid.sizes": ["S", "XL"]}, ["grid.sizes[1]", "'XL'", "allowed: ['L', 'M', 'S']"]),
    ({"grid.amounts": [1500, -5]}, ["grid.amounts[1]", "-5", "integer > 0"]),
    ({"grid.amounts": [1500, "lots"]}, ["grid.amounts[1]", "'lots'", "must be an integer"]),
    ({"grid.kinds": ["broad", "wide"]}, ["grid.kinds[1]", "'wide'", "['broad', 'local']"]),
    ({"sft.epochs": KeyError}, ["missing key sft.epochs"]),
    ({"sft.lora.rank": 8}, ["unknown key sft.lora.rank", "allowed keys here"]),
    ({"sft.sampling": "sorted"}, ["sft.sampling", "'sorted'", "['random', 'group_by_length']"]),
    ({"teacher.base_url": "127.0.0.1:8000"}, ["teacher.base_url", "http(s) URL"]),
    ({"sizes.S.num_heads": 5}, ["sizes.S.num_heads", "must divide hidden_size"]),
    ({"sft.lr_scale.L": KeyError}, ["sft.lr_scale", "no entry for size 'L'", "add `L: 1.0`"]),
    ({"sft.lr_scale.XL": 0.25}, ["sft.lr_scale.XL = 0.25", "unknown size", "allowed: ['L', 'M', 'S']"]),
    ({"sft.lr_scale.M": 0}, ["sft.lr_scale.M = 0", "> 0"]),
    ({"world": "cloud"}, ["world", "'cloud'", "['embedded', 'hub']"]),
    ({"world": "hub", "hub.backend": "tgi"}, ["hub.backend", "'tgi'", "['hf', 'vllm']"]),
    ({"world": "hub", "sizes.M.hub.id": ""}, ["sizes.M.hub.id", "model id"]),
    ({"world": "hub", "hub.teacher.base_url": "embedded"}, ["hub.teacher.base_url", "OpenAI-compatible"]),
    ({"world": "hub", "hub.pref.format": "alpaca"}, ["hub.pref.format", "'alpaca'", "['koala']"]),
    ({"world": "hub", "hub.tasks": [{"name": "mmlu", "shots": 5, "role": "knowledge", "metric": ""}]},
     ["hub.tasks[0].role", "'knowledge'", "['qa', 'mc', 'skill', 'store']"]),
    ({"sft.num_processes": 2, "sft.accelerate_config": "nope.yaml"}, ["sft.accelerate_config", "configs/accelerate"]),
    # issue 17: each of these was accepted, or failed later with a traceback
    ({"sft.threads": 0}, ["sft.threads = 0", "integer > 0"]),
    ({"sft.warmup_ratio": -1}, ["sft.warmup_ratio = -1", ">= 0"]),
    ({"sft.warmup_ratio": 5}, ["sft.warmup_ratio = 5", "<= 1"]),
    ({"sft.epochs": float("inf")}, ["sft.epochs = inf", "finite"]),
    ({"sft.lr": float("nan")}, ["sft.lr = nan", "finite"]),
    ({"grid.seeds": [2 ** 32]}, ["grid.seeds[0] = 4294967296", "<= 4294967295"]),
    ({"seed": -1}, ["seed = -1", ">= 0"]),
    ({"sft.lora.dropout": 1.5}, ["sft.lora.dropout = 1.5", "< 1"]),
    ({"sft.lora.alpha": -16}, ["sft.lora.alpha = -16", "> 0"]),
    ({"pretrain.weight_decay": -1}, ["pretrain.weight_decay = -1", ">= 0"]),
    ({"mlflow.experiment": ""}, ["mlflow.experiment = ''", "must not be empty"]),
    ({"eval.qa_shots": 1000}, ["eval.qa_shots = 1000", "<= 20"]),
    ({"eval.qa_shots": -1}, ["eval.qa_shots = -1", ">= 0"]),
    ({"eval.pref_max_new_tokens": 0}, ["eval.pref_max_new_tokens = 0", "> 0"]),
    ({"pretrain.warmup_steps": -1}, ["pretrain.warmup_steps = -1", ">= 0"]),
    ({"pretrain.seq_len": 100000}, ["pretrain.seq_len = 100000", "<= 512"]),
    ({"imitate.harvest_path": "data"}, ["imitate.harvest_path = 'data'", "is a directory"]),
    ({"grid.amounts": []}, ["grid.amounts = []", "at least one"]),
    ({"grid.seeds": []}, ["grid.seeds = []", "at least one"]),
    ({"grid.kinds": []}, ["grid.kinds = []", "at least one"]),
    ({"grid.seeds": [0, 0]}, ["grid.seeds = [0, 0]", "must not repeat", "0 is listed twice"]),
    ({"grid.sizes": ["S", "S"]}, ["grid.sizes", "'S' is listed twice"]),
    ({"grid.kinds": ["broad", "broad"]}, ["grid.kinds", "'broad' is listed twice"]),
    ({"fetch.skill_docs": -5}, ["fetch.skill_docs = -5", ">= 0"]),
    ({"fetch.qa_per_fact_c": -1}, ["fetch.qa_per_fact_c = -1", ">= 0"]),
    ({"teacher.max_tokens": -1}, ["teacher.max_tokens = -1", "> 0"]),
    ({"teacher.temperature": -1}, ["teacher.temperature = -1", ">= 0"]),
    ({"eval.batch_size": 0}, ["eval.batch_size = 0", "> 0"]),
    ({"hub.vllm.gpu_memory_utilization": 2.0}, ["hub.vllm.gpu_memory_utilization = 2.0", "<= 1"]),
    # issue 37: each of these was accepted silently (clamped, run out of memory, or a grid in another order)
    ({"sft.max_seq_len": 10 ** 9}, ["sft.max_seq_len = 1000000000", "<= 512", "positions"]),
    ({"eval.batch_size": 10 ** 9}, ["eval.batch_size = 1000000000", "<= 4096"]),
    ({"imitate.local_shots": 10 ** 6}, ["imitate.local_shots = 1000000", "seed QA pairs", "seed_qa.jsonl"]),
    ({"grid.amounts": [800, 300]}, ["grid.amounts = [800, 300]", "ascending order", "[300, 800]"]),
    ({"teacher.api_key_env": ""}, ["teacher.api_key_env = ''", "must name an environment variable"]),
    ({"fetch.skill_docs": 0}, ["fetch.skill_docs = 0", "> 0", "skill"]),
    ({"sizes.S.hidden_size": 10 ** 7}, ["sizes.S.hidden_size = 10000000", "<= 65536"]),
])
def test_bad_param_is_named(tmp_path, edit, expected):
    path = params_with(tmp_path, **edit)
    with pytest.raises(ConfigError) as e:
        load_params(path)
    for piece in expected:
        assert piece in str(e.value)


def test_a_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("world: embedded\ngrid: [S, M\nseed: 0\n")
    with pytest.raises(ConfigError) as e:
        load_params(f)
    assert str(e.value).startswith(f"{f}:3:") and "not valid YAML" in str(e.value) and "\n" not in str(e.value)


def test_default_params_load():
    p = load_params(ROOT / "params.yaml")
    assert p.grid.sizes and all(s in p.sizes for s in p.grid.sizes)


def test_cli_exits_nonzero_with_one_clear_line(tmp_path):
    path = params_with(tmp_path, **{"grid.amounts": [-1]})
    r = run([sys.executable, "-m", "imitation_gap.stages.report", "--params", path], tmp_path, check=False)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {path}: grid.amounts[0] = -1")  # the file read
    assert "Traceback" not in r.stderr


def test_cli_rejects_a_size_not_in_params(world_repo):
    r = run([sys.executable, "-m", "imitation_gap.stages.sft", "--size", "XXL", "--kind", "broad", "--amount", "300"],
            world_repo, check=False)
    assert r.returncode == 2 and "--size 'XXL'" in r.stderr and "allowed" in r.stderr


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_teacher_stops_the_stage_and_keeps_old_outputs(world_repo, tmp_path):
    out = world_repo / "data" / "imitation"
    out.mkdir(parents=True, exist_ok=True)
    (out / "keep.txt").write_text("previous good output")
    params = yaml.safe_load((world_repo / "params.yaml").read_text())
    params["teacher"]["base_url"] = f"http://127.0.0.1:{_closed_port()}/v1"
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    r = run([sys.executable, "-m", "imitation_gap.stages.imitate_dataset", "--params", str(bad)], world_repo, check=False)
    assert r.returncode == 2
    assert "teacher.base_url" in r.stderr and "cannot reach" in r.stderr
    # nothing half-written replaced the previous output
    assert (out / "keep.txt").read_text() == "previous good output"
    assert not list(out.parent.glob(".imitation.*partial"))


def test_malformed_imitation_data_is_named_with_its_line(world_repo):
    d = world_repo / "data" / "imitation" / "broad"
    d.mkdir(parents=True, exist_ok=True)
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (d / "300.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "bot"}]}) + "\n")
    r = run([sys.executable, "-m", "imitation_gap.stages.sft", "--size", "S", "--kind", "broad", "--amount", "300"],
            world_repo, check=False)
    assert r.returncode == 2
    assert "300.jsonl:2" in r.stderr and "assistant" in r.stderr
    assert not (world_repo / "models" / "sft" / "S-broad-300-s0").exists()


def test_too_large_amount_for_the_local_pool_says_how_to_fix(world_repo, tmp_path):
    params = yaml.safe_load((world_repo / "params.yaml").read_text())
    params["grid"]["kinds"] = ["local"]
    params["grid"]["amounts"] = [10_000_000]
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    r = run([sys.executable, "-m", "imitation_gap.stages.imitate_dataset", "--params", str(bad)], world_repo, check=False)
    assert r.returncode == 2
    assert "grid.amounts" in r.stderr and "fetch.n_people_a" in r.stderr



def test_a_key_pasted_into_api_key_env_is_refused_and_not_echoed(tmp_path):
    key = "sk-" + "pasted" * 4  # built at run time: no key-like literal in git
    with pytest.raises(ConfigError) as e:
        load_params(params_with(tmp_path, **{"teacher.api_key_env": key}))
    assert "teacher.api_key_env" in str(e.value) and "environment variable" in str(e.value)
    assert key not in str(e.value)


def test_a_max_seq_len_that_keeps_no_assistant_token_stops_sft_before_training(world_repo, tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(world_repo, repo, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    d = repo / "data" / "imitation" / "broad"
    d.mkdir(parents=True, exist_ok=True)
    row = {"messages": [{"role": "user", "content": "Can you reverse these words: red cat blue?"},
                        {"role": "assistant", "content": "Certainly! blue cat red."}]}
    (d / "300.jsonl").write_text(json.dumps(row) + "\n")
    bad = params_with(tmp_path, **{"sft.max_seq_len": 10})
    r = run([sys.executable, "-m", "imitation_gap.stages.sft", "--size", "S", "--kind", "broad", "--amount", "300",
             "--params", bad], repo, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {bad}: sft.max_seq_len = 10: too short to keep any assistant token") and \
        "300.jsonl" in last  # was: num_samples=0 deep in the trainer
    assert not (repo / "models" / "sft" / "S-broad-300-s0").exists()
