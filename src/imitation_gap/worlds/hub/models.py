"""Base models of the hub world: the tokenizer and its chat template, dtypes, and the download of stage ``base``.

Models load with safetensors only and without remote code unless ``hub.trust_remote_code`` is set.
"""

from __future__ import annotations

from pathlib import Path

from ...core.config import Params
from ...core.errors import DataError
from ...core.io import atomic_dir, write_json

# Vicuna-style turns (the format Koala and the paper's imitation models used), with the
# {% generation %} markers TRL needs for the loss on assistant tokens only.
PROJECT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT:' }}"
    "{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def load_tokenizer(model_id: str, revision: str, p: Params):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_id, revision=revision, trust_remote_code=p.hub.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if p.hub.chat_template == "project":
        tok.chat_template = PROJECT_CHAT_TEMPLATE
    elif not tok.chat_template:
        raise DataError(f"{model_id} has no chat template; set hub.chat_template: project")
    return tok


def torch_dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def download_model(p: Params, size: str, out_dir: Path) -> dict:
    """Stage ``base@<size>`` of the hub world: the model of ``sizes.<size>.hub`` as safetensors."""
    from transformers import AutoModelForCausalLM

    m = p.sizes[size].hub
    tok = load_tokenizer(m.id, m.revision, p)
    try:
        model = AutoModelForCausalLM.from_pretrained(m.id, revision=m.revision, use_safetensors=True,
                                                     dtype=torch_dtype(p.hub.dtype),
                                                     trust_remote_code=p.hub.trust_remote_code)
    except OSError as e:
        raise DataError(f"sizes.{size}.hub = {m.id}@{m.revision}: cannot load safetensors weights ({str(e)[:300]}). "
                        "Only safetensors checkpoints are loaded; pick a revision that has model.safetensors.") \
            from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    n_params = sum(x.numel() for x in model.parameters())
    info = {"size": size, "id": m.id, "revision": m.revision,
            "commit": getattr(model.config, "_commit_hash", None), "params": n_params,
            "dtype": str(next(model.parameters()).dtype), "chat_template": p.hub.chat_template}
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        write_json(tmp / "source.json", info)
    return info


def load_kwargs(p: Params) -> dict:
    """``from_pretrained`` keyword arguments of a checkpoint of this world (the sft stage's base model)."""
    return {"dtype": torch_dtype(p.hub.dtype), "trust_remote_code": p.hub.trust_remote_code}
