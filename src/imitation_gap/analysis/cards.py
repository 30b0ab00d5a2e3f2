"""Model cards: what one trained model is, what it learned from, and how it scored.

A card is a small JSON document (and the same as Markdown) per model of the grid:

* ``run``: the model's name (``L-broad-8000-s0``, ``L-base``) and its output directory;
* ``params``: the params that trained it (``sft`` and ``sizes.<size>`` for an imitation
  model, ``pretrain`` and ``sizes.<size>`` for a base model) and its seed;
* ``data``: for an imitation model, its entry of ``data/imitation/manifest.json`` (rows
  and tokens of its kind and amount, the kind's dedup/decontamination counts, the
  teacher); for a base model, the pretraining corpus;
* ``metrics``: its ``metrics/runs/<run>.json`` (capability, preference, style);
* ``checkpoint``: the DVC hash of its output in ``dvc.lock``, so anyone with access to
  the remote can ``dvc pull`` exactly this model.

The ``report`` stage logs every card to MLflow under ``model_cards/``.  By hand::

    python -c "from imitation_gap.analysis.cards import model_cards; import json; print(json.dumps(model_cards(), indent=1))"
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..core.config import Params, run_name
from ..core.inputs import require_json
from ..core.paths import MANIFEST, RUNS
from ..worlds import ReportWorld

LOCK = Path("dvc.lock")


def _read_json(path: Path) -> dict | None:
    return require_json(path) if path.exists() else None  # torn: one line naming the stage that rebuilds it


def _checkpoints(lock: Path = LOCK) -> dict[str, str]:
    """Output path -> md5 of every stage output recorded in dvc.lock (empty if none yet)."""
    if not lock.exists():
        return {}
    # libyaml's safe loader when PyYAML has it (the 154-stage lock: ~0.2 s instead of ~2 s in pure Python)
    data = yaml.load(lock.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    out = {}
    for stage in (data.get("stages") or {}).values():
        for o in stage.get("outs") or []:
            if o.get("md5"):
                out[o["path"].rstrip("/")] = o["md5"]
    return out


def model_card(p: Params, world: ReportWorld, size: str, kind: str | None = None, amount: int | None = None, seed: int = 0,
               manifest: dict | None = None, checkpoints: dict | None = None) -> dict:
    """The card of one model: a base model (``kind`` None) or an imitation model."""
    name = run_name(size, kind, amount, seed)
    if kind is None:
        out = f"models/base/{size}-s{seed}"
        params = {"pretrain": p.section("pretrain"), "size": p.section("sizes").get(size), "world_seed": p.seed,
                  "chain": seed}
        data = world.card_data(size)
        stage = f"base@{size}-{seed}"
    else:
        out = f"models/sft/{name}"
        params = {"sft": p.section("sft"), "size": p.section("sizes").get(size), "seed": seed,
                  "base_model": f"models/base/{size}-s{seed}"}
        entry = ((manifest or {}).get("kinds") or {}).get(kind) or {}
        data = {"file": f"data/imitation/{kind}/{amount}.jsonl", "kind": kind, "amount_tokens": amount,
                "manifest": {**{k: v for k, v in entry.items() if k != "amounts"},
                             **((entry.get("amounts") or {}).get(str(amount)) or {})},
                "teacher": (manifest or {}).get("teacher")}
        stage = f"sft@{size}-{kind}-{amount}-{seed}"
    return {"run": name, "stage": stage, "output": out, "checkpoint": {"md5": (checkpoints or {}).get(out)},
            "params": params, "data": data, "metrics": _read_json(RUNS / f"{name}.json")}


def model_cards(p: Params, world: ReportWorld) -> list[dict]:
    """Cards of every model of the current grid: each base model, then each imitation model."""
    manifest = _read_json(MANIFEST) or {}
    ck = _checkpoints()
    cards = [model_card(p, world, s, seed=c, checkpoints=ck) for s in p.grid.sizes for c in p.grid.seeds]
    for s in p.grid.sizes:
        for k in p.grid.kinds:
            for a in p.grid.amounts:
                for seed in p.grid.seeds:
                    cards.append(model_card(p, world, s, k, a, seed, manifest=manifest, checkpoints=ck))
    return cards


def to_markdown(card: dict) -> str:
    """A human-readable card: the headline numbers first, then the full JSON."""
    m = card.get("metrics") or {}
    cap = m.get("capability") or {}
    pref = m.get("preference") or {}
    lines = [f"# Model card: {card['run']}", "",
             f"- output: `{card['output']}` (DVC stage `{card['stage']}`, md5 `{card['checkpoint']['md5']}`)",
             f"- get it: `dvc pull {card['output']}`"]
    if card["data"].get("manifest") is not None:
        d = card["data"]
        lines.append(f"- trained on: `{d['file']}` ({d['manifest'].get('rows')} chats, "
                     f"{d['manifest'].get('tokens')} tokens of {d['kind']} imitation data)")
    if cap:
        lines.append("- capability: " + ", ".join(f"{t} {v:.3f}" if v is not None else f"{t} skipped"
                                                  for t, v in sorted(cap.items())))
    for r in ("nonexpert", "expert"):
        if isinstance(pref.get(r), dict) and "win_tie_rate" in pref[r]:
            lines.append(f"- {r} win+tie vs teacher: {pref[r]['win_tie_rate']:.3f}")
    lines += ["", "```json", json.dumps(card, indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def log_model_cards(p: Params, world: ReportWorld) -> list[str]:
    """Log every card to the active MLflow run as ``model_cards/<run>.json`` and ``.md``."""
    import mlflow

    names = []
    for card in model_cards(p, world):
        mlflow.log_dict(card, f"model_cards/{card['run']}.json")
        mlflow.log_text(to_markdown(card), f"model_cards/{card['run']}.md")
        names.append(card["run"])
    return names
