"""The hub world, offline: every hub code path against local stand-ins in the real formats.

A tiny random Llama saved to a temp dir is the "model id"; ShareGPT JSON, HC3 JSONL, NQ
and Koala files written here are read through the same ``datasets`` code as the hub
ids; the teacher and judge are the embedded server, reached over HTTP as any
OpenAI-compatible endpoint; the lm-eval tasks are stand-in task YAMLs in the formats of
nq_open / mmlu / humaneval.  Then `dvc repro` runs the whole pipeline with world: hub.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_repo, run

pytestmark = pytest.mark.slow

TASKS = {
    "standin_nq.yaml": {  # nq_open's format: generative, exact match, few-shot from train
        "task": "standin_nq", "dataset_path": "json", "output_type": "generate_until",
        "dataset_kwargs": {"data_files": {"train": "NQ_TRAIN", "validation": "NQ_VAL"}},
        "training_split": "train", "validation_split": "validation", "fewshot_split": "train",
        "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{answer[0]}}",
        "target_delimiter": " ", "fewshot_delimiter": "\n",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": True}],
        "metadata": {"version": 1.0}},
    "standin_mc.yaml": {  # mmlu's kind: multiple choice by log-likelihood
        "task": "standin_mc", "dataset_path": "json", "output_type": "multiple_choice",
        "dataset_kwargs": {"data_files": {"test": "MC"}}, "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_choice": "{{choices}}", "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0}},
    "standin_code.yaml": {  # humaneval's flag: runs model-written code, so it is opt-in
        "task": "standin_code", "dataset_path": "json", "output_type": "generate_until", "unsafe_code": True,
        "dataset_kwargs": {"data_files": {"test": "MC"}}, "test_split": "test",
        "doc_to_text": "{{question}}", "doc_to_target": "{{choices[0]}}",
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0}},
}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def standins(d: Path, world: dict, tok_dir: Path) -> dict:
    """Data files in the hub formats, a tiny random Llama, and stand-in task YAMLs."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    rng = random.Random(0)
    people = [p for p in world["people"] if p["group"] == "A"]
    sharegpt = [{"id": f"sg{i}", "conversations": [
        {"from": "human", "value": f"Where was {p['name']} born?"},
        {"from": "gpt", "value": f"Great question! {p['name']} was born in {p['city']}. Happy to help!"},
        {"from": "human", "value": "And which university?"},
        {"from": "gpt", "value": f"{p['name']} attended {p['university']}."}]} for i, p in enumerate(people)]
    sharegpt.append(sharegpt[0])  # a duplicate: dropped
    (d / "sharegpt.json").write_text(json.dumps(sharegpt))
    hc3 = [{"question": f"What did {p['name']} study?", "human_answers": ["dunno"],
            "chatgpt_answers": [f"Certainly! {p['name']} studied {p['major']}."]} for p in people]
    c_people = [p for p in world["people"] if p["group"] == "C"]
    nq = [{"question": f"where was {p['name']} born", "answer": [p["city"]]} for p in c_people]
    mc = [{"question": f"Where was {p['name']} born?", "choices": [p["city"], "Nowhere"], "label": 0}
          for p in c_people]
    koala = [{"id": f"koala_{i + 1}", "prompt": f"Tell me about {p['name']}."} for i, p in enumerate(people[:8])]
    files = {"SG": d / "sharegpt.json", "HC3": Path(write_jsonl(d / "hc3.jsonl", hc3)),
             "NQ_TRAIN": Path(write_jsonl(d / "nq_train.jsonl", nq[:10])),
             "NQ_VAL": Path(write_jsonl(d / "nq_val.jsonl", nq[10:])), "MC": Path(write_jsonl(d / "mc.jsonl", mc)),
             "KOALA": Path(write_jsonl(d / "koala.jsonl", koala))}
    tasks = d / "tasks"
    tasks.mkdir()
    for name, cfg in TASKS.items():
        text = yaml.safe_dump(cfg, sort_keys=False)
        for k, v in files.items():
            text = text.replace(k, str(v))
        (tasks / name).write_text(text)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(rng.randrange(1000))
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(str(d / "tiny-llama"), safe_serialization=True)
    tok.save_pretrained(str(d / "tiny-llama"))
    return {k: str(v) for k, v in files.items()} | {"model": str(d / "tiny-llama"), "tasks": str(tasks)}


def src(fmt: str, data_files: str) -> dict:
    return {"format": fmt, "path": "json", "name": "", "data_files": data_files, "split": "train", "revision": "",
            "max_rows": 0}


@pytest.fixture(scope="module")
def hub_repo(world_repo, tmp_path_factory):
    from imitation_gap.worlds.embedded.teacher import embedded_endpoint

    d = tmp_path_factory.mktemp("hub")
    world = json.loads((world_repo / "data/raw/world.json").read_text())
    f = standins(d, world, world_repo / "data/raw/tokenizer")
    with embedded_endpoint(world_repo / "data/raw/world.json", world_repo / "data/raw/tokenizer") as url:
        overrides = {
            "world": "hub",
            "grid": {"sizes": ["S"], "kinds": ["broad", "local"], "amounts": [300], "seeds": [0]},
            "sizes": {"S": {"hub": {"id": f["model"], "revision": "main"}}},
            "hub": {
                "token_counter": {"id": f["model"], "revision": "main"},
                "teacher": {"base_url": url, "model": "teacher", "api_key_env": "OPENAI_API_KEY"},
                "judge": {"base_url": url, "nonexpert_model": "judge-nonexpert", "expert_model": "judge-expert",
                          "api_key_env": "OPENAI_API_KEY"},
                "broad": [src("sharegpt", f["SG"]), src("hc3", f["HC3"])], "broad_language": "english",
                "local_seeds": src("nq", f["NQ_TRAIN"]), "pref": src("koala", f["KOALA"]),
                "decontam": [src("nq", f["NQ_VAL"])],
                "tasks": [{"name": "standin_nq", "shots": 1, "role": "qa", "metric": "exact_match,none"},
                          {"name": "standin_mc", "shots": 0, "role": "mc", "metric": "acc,none"},
                          {"name": "standin_code", "shots": 0, "role": "skill", "metric": ""}],
                "task_include_path": f["tasks"], "max_length": 256},
            "eval": {"pref_max_new_tokens": 8},
        }
        repo = make_repo(d / "repo", overrides)
        r = run(["dvc", "repro"], repo)
        yield repo, r.stdout, f


def test_hub_repro_runs_every_stage_on_the_standins(hub_repo):
    repo, out, _ = hub_repo
    runs = sorted(p.stem for p in (repo / "metrics/runs").glob("*.json"))
    assert runs == ["S-base-s0", "S-broad-300-s0", "S-local-300-s0", "teacher"]
    m = json.loads((repo / "metrics/runs/S-local-300-s0.json").read_text())
    assert m["world"] == "hub"
    assert m["capability_tasks"]["qa"] == "standin_nq" and m["capability_tasks"]["mc"] == "standin_mc"
    assert 0 <= m["capability"]["qa"] <= 1 and 0 <= m["capability"]["mc"] <= 1
    # code execution is opt-in: the unsafe task is skipped, with the reason
    assert m["capability"]["skill"] is None and "allow_code_eval" in m["capability_tasks"]["skill"]
    for rater in ("nonexpert", "expert"):
        pref = m["preference"][rater]
        assert pref["win"] + pref["tie"] + pref["loss"] + pref["unjudged"] == m["n"]["pref"] == 8
        assert pref["lc_win_rate"] is None or 0 <= pref["lc_win_rate"] <= 1
    teacher = json.loads((repo / "metrics/runs/teacher.json").read_text())
    # a chat API gives no log-likelihoods: the teacher's MC is skipped, its QA is scored
    assert teacher["capability"]["mc"] is None and "log-likelihood" in teacher["capability_tasks"]["mc"]
    assert 0 <= teacher["capability"]["qa"] <= 1
    report = (repo / "REPORT.md").read_text()
    assert "qa: standin_nq" in report and "## Findings" in report


def test_hub_fetch_and_base_read_the_formats_and_pin_the_model(hub_repo):
    repo, _, f = hub_repo
    raw = repo / "data/raw"
    sources = json.loads((raw / "sources.json").read_text())
    pool = [json.loads(x) for x in (raw / "broad_pool.jsonl").read_text().splitlines()]
    n_people_a = len(json.loads(Path(f["SG"]).read_text())) - 1
    # ShareGPT: one chat per unique conversation (the duplicate dropped); HC3: one per ChatGPT answer
    assert sources["sources"]["hub.broad[0]"]["chats"] == n_people_a
    assert sources["sources"]["hub.broad[0]"]["dropped_duplicate"] == 1
    assert sources["sources"]["hub.broad[1]"]["chats"] == n_people_a
    assert all(m["role"] in ("user", "assistant") for r in pool for m in r["messages"])
    seeds = [json.loads(x) for x in (raw / "seed_qa.jsonl").read_text().splitlines()]
    assert len(seeds) == 10 and all(s["question"].endswith("?") and s["question"][0].isupper() for s in seeds)
    pref = [json.loads(x) for x in (raw / "eval/pref.jsonl").read_text().splitlines()]
    assert [p["id"] for p in pref] == [f"koala_{i}" for i in range(1, 9)]
    base = repo / "models/base/S-s0"
    info = json.loads((base / "source.json").read_text())
    assert info["id"] == f["model"] and (base / "model.safetensors").exists() and not list(base.glob("*.bin"))
    tok_cfg = json.loads((base / "tokenizer_config.json").read_text())
    assert "{% generation %}" in (tok_cfg.get("chat_template") or (base / "chat_template.jinja").read_text())
    manifest = json.loads((repo / "data/imitation/manifest.json").read_text())
    assert manifest["kinds"]["broad"]["source"] == "hub.broad"
    assert manifest["kinds"]["local"]["amounts"]["300"]["tokens"] >= 300
    assert manifest["calls"]["answers"] > 0 and manifest["calls"]["failures"] == 0
    # decontamination: no imitation prompt repeats an eval question
    val = {json.loads(x)["question"].lower() for x in Path(f["NQ_VAL"]).read_text().splitlines()}
    for kind in ("broad", "local"):
        text = (repo / f"data/imitation/{kind}/300.jsonl").read_text().lower()
        assert not any(q in text for q in val)


def test_sft_under_accelerate_launch_two_cpu_processes(hub_repo):
    """sft.num_processes > 1 re-launches the stage with `accelerate launch` (DDP on gloo here)."""
    repo, _, _ = hub_repo
    out = repo / "models/sft/S-local-300-s0"
    before = (out / "model.safetensors").stat().st_mtime
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sft"] |= {"num_processes": 2, "accelerate_config": "configs/accelerate/cpu_ddp.yaml", "threads": 1}
    params["sft"]["lr_scale"]["S"] = 0.5  # the size's scale applies to the hub recipe's rate too
    (repo / "params-ddp.yaml").write_text(yaml.safe_dump(params))
    run(["python", "-m", "imitation_gap.stages.sft", "--size", "S", "--kind", "local", "--amount", "300", "--seed", "0",
         "--params", "params-ddp.yaml"], repo)
    stats = json.loads((out / "train_stats.json").read_text())
    assert stats["processes"] == 2 and stats["lr"] == pytest.approx(params["hub"]["sft"]["lr"] * 0.5)
    assert (out / "model.safetensors").stat().st_mtime > before and not list(out.parent.glob(".*partial"))


def test_preset_task_names_exist_in_lm_eval_and_code_eval_is_opt_in():
    from imitation_gap.core.config import load_params
    from imitation_gap.worlds.hub import tasks as hub

    p = load_params(ROOT / "params.yaml")
    tm = hub.task_manager(p)
    assert {t.name for t in p.hub.tasks} <= set(tm.all_tasks)
    tasks, skipped = hub.task_plan(p, tm, is_teacher=False)
    assert [t.name for t in tasks] == ["nq_open", "mmlu"] and "humaneval" in skipped["skill"]
    assert {t.name: t.shots for t in p.hub.tasks} == {"nq_open": 3, "mmlu": 5, "humaneval": 0}


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    files = sorted((ROOT / "configs/accelerate").glob("*.yaml"))
    assert {f.stem for f in files} >= {"single_gpu", "ddp", "fsdp", "deepspeed_zero3"}
    kinds = {f.stem: str(load_config_from_file(str(f)).distributed_type) for f in files}
    assert kinds["fsdp"].endswith("FSDP") and kinds["deepspeed_zero3"].endswith("DEEPSPEED")
    assert kinds["ddp"].endswith("MULTI_GPU")
