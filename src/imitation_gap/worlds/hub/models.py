"""Base models of the hub world: the tokenizer and its chat template, dtypes, and the download of stage ``base``.

Models load with safetensors only and without remote code unless ``hub.trust_remote_code`` is set.  A GGUF file
(``sizes.<size>.hub.gguf_file``) is dequantized to dense weights on load (:func:`load_gguf`): transformers keeps a
plain ``gguf_file=`` load in its packed blocks, which ``save_pretrained`` refuses to write.
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


GENERATION_MARK = "{% generation %}"


def adds_bos(tok) -> bool:
    """Whether the tokenizer itself puts a BOS token before a text (Llama's does, GPT-2's and SmolLM2's do not)."""
    if tok.bos_token_id is None:
        return False
    ids = tok("a")["input_ids"]
    return bool(ids) and ids[0] == tok.bos_token_id


def project_template(tok) -> str:
    """:data:`PROJECT_CHAT_TEMPLATE`, opening with ``bos_token`` where the tokenizer adds one to a text: TRL
    tokenizes a chat with ``add_special_tokens=False`` and lm-eval adds the BOS, so without it a Llama would be
    fine-tuned and answer without the BOS it was pretrained with and is scored with."""
    return ("{{ bos_token }}" if adds_bos(tok) else "") + PROJECT_CHAT_TEMPLATE


def load_tokenizer(model_id: str, revision: str, p: Params, gguf_file: str = ""):
    from transformers import AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(model_id, revision=revision, trust_remote_code=p.hub.trust_remote_code, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if p.hub.chat_template == "project":
        tok.chat_template = project_template(tok)
    elif not tok.chat_template:
        raise DataError(f"{model_id} has no chat template; set hub.chat_template: project")
    elif p.sft.assistant_only_loss and GENERATION_MARK not in tok.chat_template:
        raise DataError(f"hub.chat_template = 'model': the chat template of {model_id} has no {GENERATION_MARK} "
                        "markers, so no token would count as the assistant's (sft.assistant_only_loss); set "
                        "hub.chat_template: project, or sft.assistant_only_loss: false")
    return tok


def load_gguf(model_dir: str, gguf_file: str, dtype, revision: str | None = None, **kw):
    """The model of a GGUF file, dequantized to dense weights (``GgufConfig(dequantize=True)``), so that it can be
    trained and saved as safetensors; needs the ``gguf`` package."""
    from transformers import AutoModelForCausalLM, GgufConfig

    return AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_file, revision=revision, dtype=dtype,
                                                quantization_config=GgufConfig(gguf_file=gguf_file, dequantize=True),
                                                **kw)


def torch_dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def download_model(p: Params, size: str, out_dir: Path) -> dict:
    """Stage ``base@<size>`` of the hub world: the model of ``sizes.<size>.hub`` as safetensors."""
    from transformers import AutoModelForCausalLM

    m = p.sizes[size].hub
    tok = load_tokenizer(m.id, m.revision, p, m.gguf_file)
    try:
        if m.gguf_file:
            model = load_gguf(m.id, m.gguf_file, torch_dtype(p.hub.dtype), m.revision,
                              trust_remote_code=p.hub.trust_remote_code)
        else:
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
            "dtype": str(next(model.parameters()).dtype), "chat_template": p.hub.chat_template,
            **({"gguf_file": m.gguf_file} if m.gguf_file else {})}
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        write_json(tmp / "source.json", info)
    return info


def load_kwargs(p: Params) -> dict:
    """``from_pretrained`` keyword arguments of a checkpoint of this world (the sft stage's base model)."""
    return {"dtype": torch_dtype(p.hub.dtype), "trust_remote_code": p.hub.trust_remote_code}
