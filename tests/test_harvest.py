"""Harvest mode: ShareGPT-style transcripts -> chat rows (pure, no server)."""

from __future__ import annotations

import json

import pytest

from imitation_gap.core.errors import DataError
from imitation_gap.imitation.harvest import LANG_FILTERS, ascii_ratio, english_heuristic, load_sharegpt, make_ascii_filter


def conv(*turns: tuple[str, str], **extra) -> dict:
    return {"conversations": [{"from": f, "value": v} for f, v in turns], **extra}


RECORDS = [
    conv(("human", "What is the capital of France?"), ("gpt", "Paris."), ("human", "And of Spain?"),
         ("gpt", "Madrid."), id="a"),
    conv(("human", "  what is the   capital of FRANCE? "), ("gpt", "It is Paris."), id="dup"),  # same first turn
    conv(("system", "Be brief."), ("gpt", "Hello!"), ("human", "Reverse: red cat"), ("chatgpt", "cat red"),
         ("human", "thanks"), id="lead"),  # system and leading assistant dropped, unanswered tail dropped
    conv(("human", "Écris un poème sur la mer"), ("gpt", "La mer..."), id="fr"),
    conv(("human", "日本の首都はどこですか？"), ("gpt", "東京です。"), id="ja"),
    conv(("human", "Hi"), ("human", "Anyone?"), ("gpt", "Yes."), id="cut"),  # broken alternation: cut, nothing left
    conv(("human", "Tell me a joke"), ("gpt", ""), id="empty"),
    conv(("human", "Who are you?"), ("narrator", "..."), id="odd"),
    {"id": "nothing"},
    "not a record",
]


def write_json(tmp_path, records) -> str:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(records, ensure_ascii=False))
    return str(path)


def write_jsonl(tmp_path, records) -> str:
    path = tmp_path / "sharegpt.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + "\n")
    return str(path)


@pytest.mark.parametrize("writer", [write_json, write_jsonl])
def test_rows_roles_and_dedup(tmp_path, writer):
    rows, stats = load_sharegpt(writer(tmp_path, RECORDS))
    firsts = [r["messages"][0]["content"] for r in rows]
    assert firsts == ["What is the capital of France?", "Reverse: red cat", "Écris un poème sur la mer",
                      "日本の首都はどこですか？"]
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert set(r) == {"messages"}
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": "Madrid."}
    assert rows[1]["messages"] == [{"role": "user", "content": "Reverse: red cat"},
                                   {"role": "assistant", "content": "cat red"}]
    assert stats["records"] == len(RECORDS) and stats["rows"] == 4 and stats["turns"] == 10
    assert stats["dropped_duplicate"] == 1 and stats["dropped_language"] == 0
    assert stats["dropped_unknown_speaker"] == 1 and stats["dropped_malformed"] == 2
    assert stats["dropped_empty"] == 2  # "cut" and "empty" have no answered user turn
    assert stats["system_turns_dropped"] == 1 and stats["leading_assistant_turns_dropped"] == 1
    assert stats["unanswered_turns_dropped"] >= 1 and stats["conversations_cut"] == 2


def test_language_filter_hook_and_english_heuristic(tmp_path):
    path = write_jsonl(tmp_path, RECORDS)
    rows, stats = load_sharegpt(path, lang_filter=english_heuristic)
    firsts = [r["messages"][0]["content"] for r in rows]
    assert "日本の首都はどこですか？" not in firsts and stats["dropped_language"] == 1
    assert "Écris un poème sur la mer" in firsts  # Latin script: the ASCII heuristic keeps it
    strict, st = load_sharegpt(path, lang_filter=make_ascii_filter(0.99))
    assert len(strict) == 2 and st["dropped_language"] == 2
    seen = []
    rows, _ = load_sharegpt(path, lang_filter=lambda text: seen.append(text) or "Paris" not in text)
    assert all("Paris" not in m["content"] for r in rows for m in r["messages"]) and seen
    assert LANG_FILTERS["none"] is None and LANG_FILTERS["english"] is english_heuristic
    assert ascii_ratio("") == 1.0 and ascii_ratio("ab cd") == 1.0 and ascii_ratio("aé") == 0.5


def test_dedup_happens_after_the_language_filter(tmp_path):
    recs = [conv(("human", "Hello"), ("gpt", "日本語で答えます")), conv(("human", "hello"), ("gpt", "Hi there!"))]
    rows, stats = load_sharegpt(write_json(tmp_path, recs), lang_filter=english_heuristic)
    assert [r["messages"][1]["content"] for r in rows] == ["Hi there!"] and stats["dropped_duplicate"] == 0


def test_bad_files_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        load_sharegpt(path)
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"data": []}))
    with pytest.raises(DataError, match="without 'conversations'"):
        load_sharegpt(obj)
    with pytest.raises(FileNotFoundError):
        load_sharegpt(tmp_path / "missing.json")


def test_imitate_dataset_stage_in_harvest_mode(world_repo, tmp_path):
    """`imitate.harvest_path` feeds broad data from transcripts, deduplicated, through the real stage."""
    import subprocess
    import sys

    import yaml

    from conftest import env

    dump = tmp_path / "sharegpt.jsonl"
    convs = [{"id": str(i), "conversations": [{"from": "human", "value": f"Can you reverse these words: red cat {w}?"},
                                                {"from": "gpt", "value": f"Sure! {w} cat red."}]}
             for i, w in enumerate(["blue", "green", "fish", "tree", "blue"])]
    dump.write_text("".join(json.dumps(c) + "\n" for c in convs))
    params = yaml.safe_load((world_repo / "params.yaml").read_text())
    params["grid"].update({"kinds": ["broad"], "amounts": [20, 40]})
    params["imitate"]["harvest_path"] = str(dump)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    r = subprocess.run([sys.executable, "-m", "imitation_gap.stages.imitate_dataset", "--params", str(tmp_path / "params.yaml")],
                       cwd=world_repo, env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((world_repo / "data" / "imitation" / "manifest.json").read_text())
    assert manifest["kinds"]["broad"]["source"] == "harvest"
    assert manifest["kinds"]["broad"]["rows"] == 4  # the repeated first turn was dropped
    assert manifest["calls"]["answers"] == 0  # no teacher call in harvest mode
    rows = [json.loads(x) for x in (world_repo / "data" / "imitation" / "broad" / "40.jsonl").read_text().splitlines()]
    assert rows[0]["messages"][1]["content"] == "Sure! blue cat red."
