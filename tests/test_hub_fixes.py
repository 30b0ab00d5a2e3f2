"""The defects that the hub world showed on a real LM (issue 36), each on a stand-in small enough for `make test`:
benchmark data checked before the teacher is paid, local pairs in a small model's variants, a retry that changes
the seed, the teacher's length budget, seeds refused as data, sharded checkpoints, BOS and generation markers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_repo, run, serve

LLAMA_VOCAB = ["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(60)] + list("abcdefghijklmnopqrstuvwxyz")


def tokenizer_dir(d: Path, bos: bool, template: str | None = None) -> Path:
    """A small fast tokenizer: adds <s> before every text (as Llama's does) if ``bos``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(LLAMA_VOCAB)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        t.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    if template:
        tok.chat_template = template
    d.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(d))
    return d


def hub_params(tmp_path: Path, overrides: dict | None = None):
    from imitation_gap.core.config import load_params
    from imitation_gap.core.io import deep_update

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    deep_update(raw, {"world": "hub", **(overrides or {})})
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(f)


# -- 8. BOS as the tokenizer says; a template without generation markers refused --------
def test_project_template_has_bos_where_the_tokenizer_adds_one(tmp_path):
    from imitation_gap.worlds.hub.models import load_tokenizer

    p = hub_params(tmp_path)
    chat = [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"}]
    llama = load_tokenizer(str(tokenizer_dir(tmp_path / "llama", bos=True)), "main", p)
    ids = llama.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == llama.bos_token_id and ids.count(llama.bos_token_id) == 1  # as TRL and lm-eval see it
    gpt2 = load_tokenizer(str(tokenizer_dir(tmp_path / "gpt2", bos=False)), "main", p)
    ids = gpt2.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    assert gpt2.bos_token_id not in ids  # a tokenizer that adds none gets none


def test_model_template_without_generation_markers_is_refused_in_one_line(tmp_path):
    from imitation_gap.core.errors import DataError
    from imitation_gap.worlds.hub.models import load_tokenizer

    p = hub_params(tmp_path, {"hub": {"chat_template": "model"}})
    plain = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
    d = tokenizer_dir(tmp_path / "tok", bos=False, template=plain)
    with pytest.raises(DataError) as e:
        load_tokenizer(str(d), "main", p)
    msg = str(e.value)
    assert "\n" not in msg and "{% generation %}" in msg and "hub.chat_template: project" in msg
    marked = plain.replace("m['content'] + eos_token", "m['content'] + eos_token").replace(
        "{{ m['role']", "{% generation %}{{ m['role']").replace("{% endfor %}", "{% endgeneration %}{% endfor %}")
    assert load_tokenizer(str(tokenizer_dir(tmp_path / "ok", bos=False, template=marked)), "main", p)


# -- 3. local pairs in the variants a small instruct model writes -----------------------
@pytest.mark.parametrize("answer,pair", [
    ("Question: What causes rain?\nAnswer: Clouds", ("What causes rain?", "Clouds")),  # the canonical format
    ("**Question:** What causes rain?\n**Answer:** Clouds", ("What causes rain?", "Clouds")),
    ("Q: What causes rain?\nA: Clouds", ("What causes rain?", "Clouds")),
    ("Sure!\n\nQuestion 1: What causes rain?\nAnswer 1: Clouds", ("What causes rain?", "Clouds")),
    ("Question: What causes rain? Answer: Clouds", ("What causes rain?", "Clouds")),
    ("Question: What causes rain?\nAnswer: Answer: Clouds", ("What causes rain?", "Clouds")),
])
def test_local_pair_variants_are_read(answer, pair):
    from imitation_gap.imitation.build import to_row

    row = to_row("local", "", answer)
    assert row is not None and (row["messages"][0]["content"], row["messages"][1]["content"]) == pair


def test_no_pair_no_row_and_the_hub_prompt_spells_out_the_format(tmp_path):
    import random

    from imitation_gap.imitation.build import to_row
    from imitation_gap.worlds.hub.prompts import local_prompts_hub

    assert to_row("local", "", "I do not know.") is None
    assert to_row("local", "", "What is the capital of Australia, a classic question.") is None
    seeds = [{"question": "Who wrote Hamlet?", "answer": "Shakespeare"}, {"question": "Who is Ada?", "answer": "X"}]
    prompt, sampling = next(iter(local_prompts_hub(hub_params(tmp_path), random.Random(0), seeds)))
    assert prompt.rstrip().endswith("Question: <a new question>\nAnswer: <its short answer>")
    assert sampling["temperature"] == 1.0  # the default hub.local_temperature: SmolLM2-135M meets it (tests/hub_lm)


# -- 4. a retry of a malformed answer changes the seed -----------------------------------
def test_malformed_retry_asks_with_another_seed(tmp_path):
    from openai.types.chat import ChatCompletion

    from imitation_gap.llm.client import LLMClient

    sent = []

    class Completions:
        async def create(self, **kw):
            sent.append(kw)
            text = "Question: Q?\nAnswer: A" if len(sent) == 3 else "malformed"
            return ChatCompletion.model_validate({
                "id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]})

    class Client:
        chat = type("Chat", (), {"completions": Completions()})()

    c = LLMClient("http://127.0.0.1:9/v1", "m", cache_dir=tmp_path, malformed_retries=2, backoff_base=0.001,
                  backoff_max=0.001, progress=False)
    got, why = asyncio.run(c._fetch(Client(), [{"role": "user", "content": "hi"}], {"temperature": 1.0, "seed": 3},
                                    "id", {}, validate=lambda a: None if a.startswith("Question") else "bad"))
    assert why == "" and got["content"].startswith("Question")
    seeds = [kw.get("seed") for kw in sent]
    assert seeds[0] == 3 and len(set(seeds)) == 3  # each retry samples anew
    assert all(kw["temperature"] == 1.0 and kw["messages"] == sent[0]["messages"] for kw in sent)


# -- 5. the teacher's preference answers get the models' length budget -----------------
def test_teacher_preference_answers_get_the_models_budget(tmp_path, monkeypatch):
    from imitation_gap.llm.client import LLMClient
    from imitation_gap.stages import evaluate
    from imitation_gap.worlds import Endpoint, get_world

    seen = {}
    monkeypatch.setattr(LLMClient, "check_reachable", lambda self, key: None)
    monkeypatch.setattr(LLMClient, "chat_many", lambda self, items, sampling, **kw: seen.update(sampling) or {})
    p = hub_params(tmp_path)
    evaluate.teacher_answers(p, get_world(p, "evaluate"), Endpoint("http://127.0.0.1:9/v1"), [{"id": "k1", "prompt": "hi"}])
    assert seen["max_tokens"] == p.eval.pref_max_new_tokens == p.hub.eval.pref_max_new_tokens
    # the embedded world: 64, the same cap as its models' answers (its teacher writes whole answers anyway)
    from imitation_gap.core.config import load_params

    pe = load_params(ROOT / "params.yaml")
    seen.clear()
    monkeypatch.chdir(tmp_path)
    evaluate.teacher_answers(pe, type("W", (), {"answer_problem": lambda self, k, a: None})(),
                             Endpoint("http://127.0.0.1:9/v1"), [{"id": "k1", "prompt": "hi"}])
    assert seen["max_tokens"] == pe.eval.pref_max_new_tokens


# -- 6. a copied few-shot seed is not new data ---------------------------------------------
class _Tok:
    def apply_chat_template(self, messages, **kw):
        return {"input_ids": [0] * (2 + sum(len(m["content"].split()) for m in messages))}

    def __call__(self, text, **kw):
        return {"input_ids": [0] * len(text.split())}


def test_a_copied_seed_is_refused_and_asked_again(tmp_path):
    import random

    from imitation_gap.imitation.build import build_kind
    from imitation_gap.llm.budget import CallStats
    from imitation_gap.worlds.hub.prompts import local_prompts_hub

    seeds = [{"question": f"Who wrote book {i}?", "answer": f"Author {i}"} for i in range(4)]
    p = hub_params(tmp_path, {"grid": {"amounts": [30]}, "imitate": {"local_shots": 2}})

    class Teacher:  # answers each prompt first with one of its seeds, verbatim, then (asked again) a new pair
        stats = CallStats()
        calls = 0

        def chat_many(self, items, sampling, desc="", validate=None, max_failure_fraction=None):
            out = {}
            for rid, msgs in items:
                shown = [s for s in seeds if s["question"] in msgs[0]["content"]]
                for answer in (f"Question: {shown[0]['question']}\nAnswer: {shown[0]['answer']}",
                               f"Question: What is new in {rid}?\nAnswer: Something"):
                    self.calls += 1
                    if validate(answer) is None:
                        out[rid] = {"content": answer, "prompt_tokens": 1, "completion_tokens": 1}
                        break
                    assert validate(answer) == "copied_example"
            return out

    t = Teacher()
    rows, stats = build_kind("local", local_prompts_hub(p, random.Random(0), seeds), t, p, _Tok(), set(), set())
    questions = [r["messages"][0]["content"] for r in rows]
    assert rows and not set(questions) & {s["question"] for s in seeds}
    assert all(q.startswith("What is new in") for q in questions) and t.calls % 2 == 0 and t.calls >= 2 * len(rows)


# -- 7. sharded checkpoints ---------------------------------------------------------------
def test_sft_trains_from_a_sharded_base_and_eval_accepts_shards(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    repo = make_repo(tmp_path / "repo", {"world": "hub", "grid": {"sizes": ["S"], "kinds": ["local"], "amounts": [40]}})
    base = repo / "models/base/S-s0"
    from imitation_gap.worlds.hub.models import PROJECT_CHAT_TEMPLATE

    tokenizer_dir(base, bos=False, template=PROJECT_CHAT_TEMPLATE)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(LLAMA_VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                 bos_token_id=1, eos_token_id=2, pad_token_id=3)).save_pretrained(
        str(base), max_shard_size="40KB")
    assert not (base / "model.safetensors").exists() and len(list(base.glob("model-*.safetensors"))) > 1
    rows = [{"messages": [{"role": "user", "content": "a b c"}, {"role": "assistant", "content": f"w{i} w{i + 1}"}],
             "n_tokens": 10, "id": f"local-{i}"} for i in range(4)]
    (repo / "data/imitation/local").mkdir(parents=True)
    (repo / "data/imitation/local/40.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(["python", "-m", "imitation_gap.stages.sft", "--size", "S", "--kind", "local", "--amount", "40", "--seed", "0"],
        repo)
    out = repo / "models/sft/S-local-40-s0"
    assert list(out.glob("model*.safetensors")) and json.loads((out / "train_stats.json").read_text())["rows"] == 4
    from imitation_gap.core.errors import DataError
    from imitation_gap.core.inputs import require_checkpoint  # what the sft and eval stages check

    require_checkpoint(base)
    require_checkpoint(out)
    shard = sorted(base.glob("model-*.safetensors"))[0]
    shard.unlink()  # a shard missing: no checkpoint
    with pytest.raises(DataError, match=shard.name):
        require_checkpoint(base)


# -- 2. every benchmark's data checked before the teacher is paid ------------------------
def test_a_benchmark_whose_data_cannot_load_stops_eval_before_any_teacher_call(small_world, tmp_path):
    with serve(small_world) as (url, server):
        repo = make_repo(tmp_path / "repo", {
            "world": "hub", "grid": {"sizes": ["S"], "kinds": ["local"], "amounts": [40]},
            "hub": {"teacher": {"base_url": url, "model": "teacher", "api_key_env": "OPENAI_API_KEY"},
                    "judge": {"base_url": url, "nonexpert_model": "judge-nonexpert", "expert_model": "judge-expert",
                              "api_key_env": "OPENAI_API_KEY"},
                    "tasks": [{"name": "nq_open", "shots": 3, "role": "qa", "metric": "exact_match,remove_whitespace"}]}})
        (repo / "data/raw/eval").mkdir(parents=True)
        (repo / "data/raw/eval/pref.jsonl").write_text(json.dumps({"id": "koala_1", "prompt": "Hi", "kind": "open"}) + "\n")
        r = run(["python", "-m", "imitation_gap.stages.evaluate", "--teacher"], repo, check=False,
                extra_env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                           "HF_DATASETS_CACHE": str(tmp_path / "empty-cache"), "HF_HOME": str(tmp_path / "hf")})
        lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert r.returncode == 2, r.stderr[-2000:]
        assert len(lines) == 1 and "'nq_open'" in lines[0] and "hub.task_include_path" in lines[0]
        assert "Traceback" not in r.stderr
        assert server.stats.requests == 0  # nothing asked of (or paid to) the teacher
