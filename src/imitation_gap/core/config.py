"""Typed configuration built from ``params.yaml``.

Every stage calls :func:`load_params` and gets a frozen :class:`Params`.  A bad value
stops the stage at once with a :class:`ConfigError` that names the key, the bad value
and what is allowed, e.g.::

    params.yaml: grid.amounts[1] = -5: must be an integer >= 0
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KINDS = ("broad", "local")
WORLDS = ("embedded", "hub")  # see docs/hub.md for the hub world
SAMPLING = ("random", "group_by_length")  # sft.sampling: transformers' train_sampling_strategy
ROLES = ("qa", "mc", "skill")  # capability slots: NQ-like QA, MMLU-like multiple choice, HumanEval-like skill
SOURCE_FORMATS = ("sharegpt", "hc3", "nq", "koala")
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("hf", "vllm")


class ConfigError(ValueError):
    """A bad value in params.yaml (or a -S override)."""


class DataError(ValueError):
    """A malformed input data file: the message names the file, the line and the fix."""


class EndpointError(ConnectionError):
    """The teacher or judge endpoint cannot be reached or keeps failing."""


@dataclass(frozen=True)
class Grid:
    sizes: list[str]
    kinds: list[str]
    amounts: list[int]
    seeds: list[int]


@dataclass(frozen=True)
class Fetch:
    spec: str
    seed_qa: str
    pref_prompts: str
    n_people_a: int
    n_people_b: int
    n_people_c: int
    bios_per_person: int
    qa_per_fact_c: int
    hedge_rate: float
    sentence_rate: float
    skill_docs: int
    skill_holdout: float
    n_eval_qa: int
    n_eval_mc: int
    n_eval_skill: int
    n_eval_pref: int


@dataclass(frozen=True)
class HubModel:
    """A base model on the Hugging Face hub (or a local directory in its format)."""

    id: str
    revision: str


@dataclass(frozen=True)
class Size:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    hub: HubModel


@dataclass(frozen=True)
class Pretrain:
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup_steps: int
    weight_decay: float
    threads: int


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens of one model."""

    prompt: float
    completion: float


@dataclass(frozen=True)
class Teacher:
    base_url: str
    model: str
    api_key_env: str
    temperature: float
    max_tokens: int
    concurrency: int
    timeout: float
    max_retries: int
    backoff_base: float
    backoff_max: float
    malformed_retries: int
    max_failure_fraction: float
    budget_requests: int
    budget_tokens: int
    budget_usd: float
    price_per_1m_tokens: dict[str, Price]
    cache_dir: str


@dataclass(frozen=True)
class Imitate:
    broad_fact_share: float
    local_shots: int
    local_rounds: int
    decontam_ngram: int
    harvest_path: str
    harvest_language: str


@dataclass(frozen=True)
class Lora:
    enabled: bool
    r: int
    alpha: int
    dropout: float
    load_in_4bit: bool


@dataclass(frozen=True)
class SFT:
    epochs: float
    lr: float
    batch_size: int
    max_seq_len: int
    warmup_ratio: float
    assistant_only_loss: bool
    packing: bool
    sampling: str
    bf16: bool
    gradient_checkpointing: bool
    threads: int
    num_processes: int
    accelerate_config: str
    lora: Lora


@dataclass(frozen=True)
class Judge:
    base_url: str
    nonexpert_model: str
    expert_model: str
    api_key_env: str


@dataclass(frozen=True)
class Eval:
    qa_shots: int
    mc_shots: int
    skill_shots: int
    batch_size: int
    pref_max_new_tokens: int
    log_samples: bool
    judge: Judge


@dataclass(frozen=True)
class Source:
    """A data set read through ``datasets.load_dataset(path, name, data_files=..., split=..., revision=...)``."""

    format: str
    path: str
    name: str
    data_files: str
    split: str
    revision: str
    max_rows: int


@dataclass(frozen=True)
class HubEndpoint:
    base_url: str
    model: str
    api_key_env: str


@dataclass(frozen=True)
class HubJudge:
    base_url: str
    nonexpert_model: str
    expert_model: str
    api_key_env: str


@dataclass(frozen=True)
class HubTask:
    name: str
    shots: int
    role: str
    metric: str


@dataclass(frozen=True)
class Vllm:
    tensor_parallel_size: int
    gpu_memory_utilization: float


@dataclass(frozen=True)
class Hub:
    trust_remote_code: bool
    dtype: str
    chat_template: str
    token_counter: HubModel
    teacher: HubEndpoint
    judge: HubJudge
    broad: list[Source]
    broad_language: str
    local_seeds: Source
    local_temperature: float
    pref: Source
    decontam: list[Source]
    tasks: list[HubTask]
    task_include_path: str
    allow_code_eval: bool
    backend: str
    max_length: int
    vllm: Vllm
    teacher_api: str


@dataclass(frozen=True)
class MLflow:
    tracking_uri: str
    experiment: str


@dataclass(frozen=True)
class Params:
    world: str
    seed: int
    grid: Grid
    fetch: Fetch
    sizes: dict[str, Size]
    pretrain: Pretrain
    teacher: Teacher
    imitate: Imitate
    sft: SFT
    eval: Eval
    hub: Hub
    mlflow: MLflow
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def section(self, name: str) -> dict:
        """The raw params of one section, for logging to MLflow."""
        return self.raw.get(name, {})


# ---------------------------------------------------------------------------------------
_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"params.yaml: {key} = {value!r}: must be a mapping with keys "
                              f"{[f.name for f in dataclasses.fields(tp)]}")
        return _build(tp, value, key)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"params.yaml: {key} = {value!r}: must be a list of {_TYPE_WORDS.get(inner, inner)}")
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, inner = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"params.yaml: {key} = {value!r}: must be a mapping")
        return {str(k): _convert(v, inner, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"params.yaml: {key} = {value!r}: must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"params.yaml: {key} = {value!r}: must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"params.yaml: {key} = {value!r}: must be a number")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"params.yaml: {key} = {value!r}: must be a string")
        return value
    raise TypeError(f"unsupported config type {tp} at {key}")  # a bug in this module


def _build(cls, data: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "raw"]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"params.yaml: unknown key {where}{unknown[0]}; allowed keys here: {names}")
    kwargs = {}
    for name in names:
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            raise ConfigError(f"params.yaml: missing key {key} (see the commented default params.yaml)")
        kwargs[name] = _convert(data[name], hints[name], key)
    return cls(**kwargs)


def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"params.yaml: {key} = {value!r}: {allowed}")


def _validate(p: Params) -> None:
    _check(p.world in WORLDS, "world", p.world, f"must be one of {list(WORLDS)}")
    g = p.grid
    _check(len(g.sizes) > 0, "grid.sizes", g.sizes, "must list at least one size")
    for i, s in enumerate(g.sizes):
        _check(s in p.sizes, f"grid.sizes[{i}]", s, f"unknown size; allowed: {sorted(p.sizes)} (keys of `sizes`)")
    for i, k in enumerate(g.kinds):
        _check(k in KINDS, f"grid.kinds[{i}]", k, f"must be one of {list(KINDS)}")
    for i, a in enumerate(g.amounts):
        _check(a > 0, f"grid.amounts[{i}]", a, "must be an integer > 0 (tokens of imitation data; base models are always evaluated)")
    _check(len(set(g.amounts)) == len(g.amounts), "grid.amounts", g.amounts, "must not repeat a value")
    for i, s in enumerate(g.seeds):
        _check(s >= 0, f"grid.seeds[{i}]", s, "must be an integer >= 0")
    for name, sz in p.sizes.items():
        for f in ("hidden_size", "intermediate_size", "num_layers", "num_heads"):
            _check(getattr(sz, f) > 0, f"sizes.{name}.{f}", getattr(sz, f), "must be > 0")
        _check(sz.hidden_size % sz.num_heads == 0, f"sizes.{name}.num_heads", sz.num_heads,
               f"must divide hidden_size ({sz.hidden_size})")
    fe = p.fetch
    for f in ("n_people_a", "n_people_b", "n_people_c", "bios_per_person", "n_eval_qa", "n_eval_mc",
              "n_eval_skill", "n_eval_pref"):
        _check(getattr(fe, f) > 0, f"fetch.{f}", getattr(fe, f), "must be an integer > 0")
    _check(0 <= fe.hedge_rate <= 1, "fetch.hedge_rate", fe.hedge_rate, "must be in [0, 1]")
    _check(0 <= fe.sentence_rate <= 1 - fe.hedge_rate, "fetch.sentence_rate", fe.sentence_rate,
           f"must be in [0, 1 - fetch.hedge_rate] = [0, {1 - fe.hedge_rate:g}]")
    _check(0 < fe.skill_holdout < 1, "fetch.skill_holdout", fe.skill_holdout, "must be in (0, 1)")
    pt = p.pretrain
    for f in ("steps", "batch_size", "seq_len", "threads"):
        _check(getattr(pt, f) > 0, f"pretrain.{f}", getattr(pt, f), "must be > 0")
    _check(pt.lr > 0, "pretrain.lr", pt.lr, "must be > 0")
    t = p.teacher
    _check(bool(t.base_url), "teacher.base_url", t.base_url, "must be 'embedded' or an http(s) URL")
    _check(t.base_url == "embedded" or t.base_url.startswith(("http://", "https://")), "teacher.base_url",
           t.base_url, "must be 'embedded' or an http(s) URL such as http://127.0.0.1:8000/v1")
    _check(t.concurrency > 0, "teacher.concurrency", t.concurrency, "must be > 0")
    _check(t.timeout > 0, "teacher.timeout", t.timeout, "must be > 0")
    _check(t.max_retries >= 0, "teacher.max_retries", t.max_retries, "must be >= 0")
    _check(t.backoff_base > 0, "teacher.backoff_base", t.backoff_base, "must be > 0 (seconds)")
    _check(t.backoff_max >= t.backoff_base, "teacher.backoff_max", t.backoff_max,
           f"must be >= teacher.backoff_base ({t.backoff_base})")
    _check(t.malformed_retries >= 0, "teacher.malformed_retries", t.malformed_retries, "must be >= 0")
    _check(0 <= t.max_failure_fraction <= 1, "teacher.max_failure_fraction", t.max_failure_fraction,
           "must be in [0, 1]")
    for f in ("budget_requests", "budget_tokens", "budget_usd"):
        _check(getattr(t, f) >= 0, f"teacher.{f}", getattr(t, f), "must be >= 0 (0 = no cap)")
    for name, price in t.price_per_1m_tokens.items():
        for f in ("prompt", "completion"):
            _check(getattr(price, f) >= 0, f"teacher.price_per_1m_tokens.{name}.{f}", getattr(price, f),
                   "must be >= 0 (USD per 1M tokens)")
    if t.budget_usd > 0:
        eff = resolve_world(p)
        needed = [eff.teacher.model, eff.eval.judge.nonexpert_model, eff.eval.judge.expert_model]
        missing = [m for m in needed if m not in t.price_per_1m_tokens]
        _check(not missing, "teacher.price_per_1m_tokens", sorted(t.price_per_1m_tokens),
               f"teacher.budget_usd is set, so every model called needs a price; add {missing}")
    _check(0 <= p.imitate.broad_fact_share <= 1, "imitate.broad_fact_share", p.imitate.broad_fact_share,
           "must be in [0, 1]")
    _check(p.imitate.local_shots > 0, "imitate.local_shots", p.imitate.local_shots, "must be > 0")
    _check(p.imitate.local_rounds > 0, "imitate.local_rounds", p.imitate.local_rounds, "must be > 0")
    from .harvest import LANG_FILTERS

    _check(p.imitate.harvest_language in LANG_FILTERS, "imitate.harvest_language", p.imitate.harvest_language,
           f"must be one of {sorted(LANG_FILTERS)}")
    if p.imitate.harvest_path:
        _check(Path(p.imitate.harvest_path).exists(), "imitate.harvest_path", p.imitate.harvest_path,
               "file not found (ShareGPT JSON/JSONL; put it under data/inputs/ so data.dvc tracks it)")
    _check(p.imitate.decontam_ngram > 0, "imitate.decontam_ngram", p.imitate.decontam_ngram, "must be > 0")
    s = p.sft
    _check(s.epochs > 0, "sft.epochs", s.epochs, "must be > 0")
    _check(s.lr > 0, "sft.lr", s.lr, "must be > 0")
    _check(s.batch_size > 0, "sft.batch_size", s.batch_size, "must be > 0")
    _check(s.max_seq_len > 8, "sft.max_seq_len", s.max_seq_len, "must be > 8")
    _check(s.sampling in SAMPLING, "sft.sampling", s.sampling, f"must be one of {list(SAMPLING)}")
    _check(s.lora.r > 0, "sft.lora.r", s.lora.r, "must be > 0")
    _check(s.num_processes > 0, "sft.num_processes", s.num_processes, "must be > 0 (1 = no accelerate launch)")
    if s.num_processes > 1:
        _check(bool(s.accelerate_config) and Path(s.accelerate_config).exists(), "sft.accelerate_config",
               s.accelerate_config, "sft.num_processes > 1 needs an accelerate config file, e.g. "
               "configs/accelerate/ddp.yaml (see configs/accelerate/)")
    j = p.eval.judge
    _check(j.base_url == "embedded" or j.base_url.startswith(("http://", "https://")), "eval.judge.base_url",
           j.base_url, "must be 'embedded' or an http(s) URL")
    if p.world == "hub":
        _validate_hub(p)


def _validate_hub(p: Params) -> None:
    from .harvest import LANG_FILTERS

    h = p.hub
    for s in p.grid.sizes:
        m = p.sizes[s].hub
        _check(bool(m.id), f"sizes.{s}.hub.id", m.id, "world: hub needs a model id (e.g. EleutherAI/pythia-160m) "
               "or a local directory for every size in grid.sizes")
        _check(bool(m.revision), f"sizes.{s}.hub.revision", m.revision,
               "must name a revision (a commit SHA pins it; 'main' follows the branch)")
    _check(h.dtype in DTYPES, "hub.dtype", h.dtype, f"must be one of {list(DTYPES)}")
    _check(h.backend in BACKENDS, "hub.backend", h.backend, f"must be one of {list(BACKENDS)}")
    _check(h.chat_template in ("project", "model"), "hub.chat_template", h.chat_template,
           "must be 'project' (the shipped USER/ASSISTANT template) or 'model' (the tokenizer's own)")
    _check(h.teacher_api in ("chat", "completions"), "hub.teacher_api", h.teacher_api,
           "must be 'chat' (chat-completions: generative tasks only) or 'completions' (also log-likelihood)")
    _check(h.broad_language in LANG_FILTERS, "hub.broad_language", h.broad_language,
           f"must be one of {sorted(LANG_FILTERS)}")
    _check(h.max_length > 0, "hub.max_length", h.max_length, "must be > 0")
    _check(bool(h.token_counter.id), "hub.token_counter.id", h.token_counter.id,
           "must name the tokenizer that counts imitation tokens (e.g. the smallest base model's)")
    for key, ep in (("hub.teacher", h.teacher), ("hub.judge", h.judge)):
        _check(ep.base_url.startswith(("http://", "https://")), f"{key}.base_url", ep.base_url,
               "must be an http(s) URL of an OpenAI-compatible API (OpenAI, vLLM, llama.cpp server)")
    sources = [(f"hub.broad[{i}]", s, ("sharegpt", "hc3")) for i, s in enumerate(h.broad)]
    sources += [("hub.local_seeds", h.local_seeds, ("nq",)), ("hub.pref", h.pref, ("koala",))]
    sources += [(f"hub.decontam[{i}]", s, SOURCE_FORMATS) for i, s in enumerate(h.decontam)]
    _check(len(h.broad) > 0 or "broad" not in p.grid.kinds, "hub.broad", h.broad,
           "grid.kinds has broad: list at least one ShareGPT/HC3 source")
    for key, src, formats in sources:
        _check(src.format in formats, f"{key}.format", src.format, f"must be one of {list(formats)}")
        _check(bool(src.path), f"{key}.path", src.path, "must name a hub data set id, or 'json' with data_files")
        _check(bool(src.split), f"{key}.split", src.split, "must name a split, e.g. train")
        _check(src.max_rows >= 0, f"{key}.max_rows", src.max_rows, "must be >= 0 (0 = all rows)")
    names = [t.name for t in h.tasks]
    _check(len(set(names)) == len(names), "hub.tasks", names, "must not list a task twice")
    for i, t in enumerate(h.tasks):
        _check(t.role in ROLES, f"hub.tasks[{i}].role", t.role, f"must be one of {list(ROLES)}")
        _check(t.shots >= 0, f"hub.tasks[{i}].shots", t.shots, "must be >= 0")
    roles = [t.role for t in h.tasks]
    _check(len(set(roles)) == len(roles), "hub.tasks", roles, "each role (qa, mc, skill) at most once")


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the repository root (where dvc.yaml is)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    params = _build(Params, data, "")
    params = dataclasses.replace(params, raw=data)
    _validate(params)
    return resolve_world(params)


def resolve_world(p: Params) -> Params:
    """The effective params of the chosen world.

    In the hub world the teacher and the judge are the endpoints of ``hub.teacher`` /
    ``hub.judge``; every stage then reads ``p.teacher`` and ``p.eval.judge`` alone, so
    switching ``world`` is the only change a user makes.
    """
    if p.world != "hub":
        return p
    t, j = p.hub.teacher, p.hub.judge
    teacher = dataclasses.replace(p.teacher, base_url=t.base_url, model=t.model, api_key_env=t.api_key_env)
    judge = Judge(base_url=j.base_url, nonexpert_model=j.nonexpert_model, expert_model=j.expert_model,
                  api_key_env=j.api_key_env)
    return dataclasses.replace(p, teacher=teacher, eval=dataclasses.replace(p.eval, judge=judge))


# ---------------------------------------------------------------------------------------
def run_name(size: str, kind: str | None = None, amount: int | None = None, seed: int | None = None) -> str:
    """Name of a model / metrics file: ``L-base`` or ``L-broad-8000-s0``."""
    if kind is None:
        return f"{size}-base"
    return f"{size}-{kind}-{amount}-s{seed}"


def check_cell(p: Params, size: str, kind: str | None = None, amount: int | None = None) -> None:
    """Validate a CLI cell against the params (a stage called with a size not in `sizes`, ...)."""
    if size not in p.sizes:
        raise ConfigError(f"--size {size!r}: unknown size; allowed: {sorted(p.sizes)} (keys of `sizes` in params.yaml)")
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"--kind {kind!r}: must be one of {list(KINDS)}")
    if amount is not None and amount <= 0:
        raise ConfigError(f"--amount {amount!r}: must be an integer > 0")

