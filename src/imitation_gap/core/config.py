"""Typed configuration built from ``params.yaml``.

Every stage calls :func:`load_params` and gets a frozen :class:`Params`: pydantic models
with ``extra="forbid"`` (a misspelt key is an error) and strict types (``"3"`` is not a
number, ``1.5`` not an integer).  A bad value stops the stage at once with a
:class:`ConfigError` that names the file, the key, the bad value and what is allowed, e.g.::

    params.yaml: grid.amounts[1] = -5: must be an integer > 0 (tokens of imitation data; ...)

Types and single-value bounds live on the fields below; rules that tie several keys
together (a size listed in ``grid.sizes`` must be a key of ``sizes``, ...) are in
:func:`_validate`.  Every default, with its meaning, is in the commented ``params.yaml``.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError

from . import redact
from .errors import ConfigError

Kind = Literal["broad", "local"]
WorldName = Literal["embedded", "hub"]  # see docs/hub.md for the hub world
Sampling = Literal["random", "group_by_length"]  # sft.sampling: transformers' train_sampling_strategy
Role = Literal["qa", "mc", "skill", "store"]  # capability slots: NQ-like QA, MMLU-like multiple choice, HumanEval-like
# skill; store: a knowledge probe (what pretraining stored, asked as plain text), read by the instrument checks
ChatKind = Literal["qa", "bio"]  # fetch.chat_claim_kinds: chat answers that may open with a confident claim
Language = Literal["none", "english"]  # keys of imitation.harvest.LANG_FILTERS
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Backend = Literal["hf", "vllm"]

KINDS = typing.get_args(Kind)
WORLDS = typing.get_args(WorldName)
SOURCE_FORMATS = ("sharegpt", "hc3", "nq", "koala")

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Rate = Annotated[float, Field(ge=0, le=1, description="a share, in [0, 1]")]
Str = Annotated[str, BeforeValidator(lambda v: "" if v is None else v)]  # an empty YAML value is ""
Name = Annotated[str, Field(min_length=1)]  # a model name, an experiment: never empty
Seed = Annotated[int, Field(ge=0, le=2 ** 32 - 1)]  # numpy and torch take seeds in [0, 2**32)
Temperature = Annotated[float, Field(ge=0, le=2)]  # the OpenAI API's range
EnvName = Annotated[str, BeforeValidator(lambda v: "" if v is None else v),
                    Field(pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$")]  # an environment variable's name, or ""
FEWSHOT_POOL = 20  # few-shot examples per capability task that the embedded world's fetch writes (corpus.eval_sets)
MAX_POSITIONS = 512  # positions of the embedded base models (worlds/embedded/pretrain.model_config)


def _unique(values: list) -> list:
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"must not repeat a value ({v!r} is listed twice)")
        seen.add(v)
    return values


def GridList(item: Any) -> Any:  # noqa: N802 - a type: a non-empty list with no value twice
    return Annotated[list[item], Field(min_length=1), AfterValidator(_unique)]


class _Section(BaseModel):
    # allow_inf_nan=False: .inf and .nan are no value of any key (epochs: .inf would train forever)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Grid(_Section):
    sizes: GridList(str)
    kinds: GridList(Kind)
    amounts: GridList(PosInt) = Field(description="tokens of imitation data; base models are always evaluated")
    seeds: GridList(Seed) = Field(description="one replicate each: a seed listed twice counts one run twice in "
                                              "the confidence interval")


class Fetch(_Section):
    spec: Str
    seed_qa: Str
    pref_prompts: Str
    n_people_a: PosInt
    n_people_b: PosInt
    n_people_c: PosInt
    first_names: NonNegInt = Field(description="0 = any first name of the spec")
    last_names: NonNegInt = Field(description="0 = a last name of their own per person")
    bios_min: PosInt
    bios_max: PosInt
    qa_per_fact_c: NonNegInt
    hedge_rate: Rate
    sentence_rate: Rate
    chat_share: float = Field(ge=0, lt=1, description="a share of the corpus' documents, in [0, 1)")
    chat_style_rate: Rate
    chat_list_rate: Rate
    chat_claim_kinds: GridList(ChatKind) = Field(description="chat kinds whose answers may open with a confident "
                                                            "claim: qa (group-C facts), bio (anyone's biography)")
    skill_docs: NonNegInt
    skill_min_words: PosInt = Field(description="words in the shortest list of a reversal example")
    skill_max_words: PosInt = Field(description="words in the longest list of a reversal example")
    skill_holdout: float = Field(gt=0, lt=1)
    n_eval_qa: PosInt
    n_eval_mc: PosInt
    n_eval_skill: PosInt
    n_eval_pref: PosInt


class HubModel(_Section):
    """A base model on the Hugging Face hub (or a local directory in its format)."""

    id: Str
    revision: Str
    # a GGUF file in that repo or directory (e.g. SmolLM2-135M-Instruct.Q4_1.gguf): dequantized to dense weights
    gguf_file: Str = Field(default="", description="'' = safetensors weights; else a .gguf file of the repo")


class Size(_Section):
    hidden_size: PosInt
    intermediate_size: PosInt
    num_layers: PosInt
    num_heads: PosInt
    lr: PosFloat = Field(description="the pretraining peak learning rate of this size")
    hub: HubModel


class Pretrain(_Section):
    steps: PosInt
    batch_size: PosInt
    seq_len: PosInt = Field(le=MAX_POSITIONS, description=f"the embedded base models hold {MAX_POSITIONS} positions")
    warmup_steps: NonNegInt
    weight_decay: NonNegFloat
    threads: PosInt


class Price(_Section):
    """USD per 1M tokens of one model."""

    prompt: NonNegFloat = Field(description="USD per 1M tokens")
    completion: NonNegFloat = Field(description="USD per 1M tokens")


class Teacher(_Section):
    base_url: Str
    model: Name
    api_key_env: EnvName
    temperature: Temperature
    max_tokens: PosInt
    concurrency: PosInt
    timeout: PosFloat
    max_retries: NonNegInt
    backoff_base: PosFloat = Field(description="seconds")
    backoff_max: float
    malformed_retries: NonNegInt
    max_failure_fraction: Rate
    budget_requests: NonNegInt = Field(description="0 = no cap")
    budget_tokens: NonNegInt = Field(description="0 = no cap")
    budget_usd: NonNegFloat = Field(description="0 = no cap")
    price_per_1m_tokens: dict[str, Price]
    cache_dir: Str


class Imitate(_Section):
    broad_fact_share: Rate
    local_shots: PosInt
    local_rounds: PosInt
    decontam_ngram: PosInt
    harvest_path: Str
    harvest_language: Language


class Lora(_Section):
    enabled: bool
    r: PosInt
    alpha: PosInt
    dropout: float = Field(ge=0, lt=1)
    load_in_4bit: bool


class SFT(_Section):
    epochs: PosFloat
    lr: PosFloat
    lr_scale: dict[str, PosFloat] = Field(description="per size (keys of `sizes`): its SFT rate is lr x this")
    batch_size: PosInt
    max_seq_len: int = Field(gt=8)
    warmup_ratio: Rate
    assistant_only_loss: bool
    packing: bool
    sampling: Sampling
    bf16: bool
    gradient_checkpointing: bool
    threads: PosInt
    num_processes: PosInt = Field(description="1 = no accelerate launch")
    accelerate_config: Str
    lora: Lora

    def lr_for(self, size: str) -> float:
        """The SFT peak learning rate of one size: ``lr`` (``hub.sft.lr`` in the hub world) x ``lr_scale[size]``."""
        return self.lr * self.lr_scale[size]


class Judge(_Section):
    base_url: Str
    nonexpert_model: Name
    expert_model: Name
    api_key_env: EnvName


class Eval(_Section):
    qa_shots: NonNegInt
    mc_shots: NonNegInt
    skill_shots: NonNegInt
    batch_size: PosInt
    pref_max_new_tokens: PosInt
    log_samples: bool
    judge: Judge


class Source(_Section):
    """A data set read through ``datasets.load_dataset(path, name, data_files=..., split=..., revision=...)``."""

    format: Str
    path: Str
    name: Str
    data_files: Str
    split: Str
    revision: Str
    max_rows: NonNegInt = Field(description="0 = all rows")


class HubEndpoint(_Section):
    base_url: Str
    model: Name
    api_key_env: EnvName


class HubTask(_Section):
    name: Str
    shots: NonNegInt
    role: Role
    metric: Str


class Vllm(_Section):
    tensor_parallel_size: PosInt
    gpu_memory_utilization: float = Field(gt=0, le=1)


class HubSFT(_Section):
    """The SFT recipe of ``world: hub``: these keys replace those of ``sft`` (docs/hub.md cites each value)."""

    lr: PosFloat
    epochs: PosFloat
    batch_size: PosInt = Field(description="per device; the global batch is batch_size x sft.num_processes")
    max_seq_len: int = Field(gt=8)
    warmup_ratio: float
    bf16: bool
    gradient_checkpointing: bool


class HubEval(_Section):
    """The eval settings of ``world: hub``: these keys replace those of ``eval``."""

    batch_size: PosInt
    pref_max_new_tokens: PosInt


class AnswerCheck(_Section):
    min_word_share: float = Field(ge=0, le=1, description="share of an answer's words that must be printable words")
    control_tokens: bool = Field(description="refuse answers holding a chat template's or tokenizer's control token")


class Hub(_Section):
    trust_remote_code: bool
    dtype: Dtype
    chat_template: Literal["project", "model"] = Field(
        description="project: the shipped USER/ASSISTANT template; model: the tokenizer's own")
    token_counter: HubModel
    teacher: HubEndpoint
    judge: Judge
    broad: list[Source]
    broad_language: Language
    local_seeds: Source
    local_temperature: Temperature
    pref: Source
    decontam: list[Source]
    tasks: list[HubTask]
    task_include_path: Str
    allow_code_eval: bool
    backend: Backend
    max_length: PosInt
    vllm: Vllm
    teacher_api: Literal["chat", "completions"] = Field(
        description="chat: chat-completions, generative tasks only; completions: also log-likelihood")
    answer_check: AnswerCheck
    sft: HubSFT
    eval: HubEval


class Checks(_Section):
    """Thresholds of the instrument checks (see analysis/checks.py and params.yaml)."""

    storage_min_largest: Rate
    extraction_min_share: PosFloat
    copy_base_min: Rate
    copy_imitation_min: Rate
    copy_imitation_max_other: Rate
    style_min_phrase_count: NonNegInt
    sft_max_final_loss: PosFloat
    sft_min_style: Rate
    retention_min_share: PosFloat
    skill_min_base: Rate


class Findings(_Section):
    """Thresholds of the F1-F5 rules (see analysis/findings.py and params.yaml)."""

    f1_nonexpert_min: Rate
    f1_gap_min: float
    f2_max_gain: float
    f3_min_gain: float
    f4_min_gain: float
    f5_style_share: PosFloat
    f5_fact_gap: float


class Report(_Section):
    level: float = Field(gt=0, lt=1, description="a confidence level, e.g. 0.95")
    gap_min: float = Field(ge=0, le=1, description="an accuracy difference in [0, 1]")
    checks: Checks
    findings: Findings


class MLflow(_Section):
    tracking_uri: Str
    experiment: Name


class Params(_Section):
    world: WorldName
    seed: Seed
    grid: Grid
    fetch: Fetch
    sizes: dict[str, Size]
    pretrain: Pretrain
    teacher: Teacher
    imitate: Imitate
    sft: SFT
    eval: Eval
    report: Report
    hub: Hub
    mlflow: MLflow
    _raw: dict = PrivateAttr(default_factory=dict)  # the file's own mapping, for logging sections as written
    _source: str = PrivateAttr(default="params.yaml")  # the file read (--params), for messages

    def section(self, name: str) -> dict:
        """The raw params of one section, for logging to MLflow."""
        return self._raw.get(name, {})

    def key_of(self, key: str) -> str:
        """The key of ``params.yaml`` that the resolved value of ``key`` (``sft.lr``, ``eval.batch_size``) was read
        from: in the hub world, the hub recipe's (``hub.sft.lr``), where it has one (:func:`resolve_world`)."""
        section, _, rest = key.partition(".")
        recipe = getattr(self.hub, section, None) if self.world == "hub" and section in ("sft", "eval") else None
        return f"hub.{key}" if recipe is not None and rest.split(".")[0] in type(recipe).model_fields else key

    @property
    def source(self) -> str:
        """The file these params were read from (``--params``), for error messages."""
        return self._source


# -- pydantic's errors, as one line each -------------------------------------------------
_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
               "list": "a list", "dict": "a mapping"}


def _key(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _at(loc: tuple) -> tuple[Any, Any]:
    """(type, pydantic field) that ``loc`` points at inside :class:`Params` (None where unknown)."""
    tp, fld = Params, None
    for part in loc:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fld = tp.model_fields.get(part) if isinstance(part, str) else None
            tp = fld.annotation if fld else None
        else:  # an item of a list, a value of a mapping
            args = typing.get_args(tp)
            tp = args[-1] if args else None
        while typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
    return tp, fld


def _allowed(err: dict, tp: Any) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "literal_error":
        return f"must be one of {list(typing.get_args(tp))}"
    if isinstance(tp, type) and issubclass(tp, BaseModel) and kind in ("model_type", "dict_type"):
        return f"must be a mapping with keys {list(tp.model_fields)}"
    what = kind.split("_")[0]
    if kind.endswith(("_type", "_parsing", "_from_float")) and what in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[what]}"
    if kind == "finite_number":
        return "must be a finite number (not .inf or .nan)"
    if kind == "too_short":
        return "must list at least one value"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return "must name an environment variable (letters, digits, _), e.g. OPENAI_API_KEY: the key itself never goes in params"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        return f"must be {'an integer ' if tp is int else ''}{bounds[kind]} {bound if isinstance(bound, int) else f'{bound:g}'}"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return err["msg"]


def _one_line(err: dict) -> str:
    loc = err["loc"]
    if err["type"] == "missing":
        return f"missing key {_key(loc)} (see the commented default params.yaml)"
    if err["type"] == "extra_forbidden":
        parent, _ = _at(loc[:-1])
        return f"unknown key {_key(loc)}; allowed keys here: {list(parent.model_fields)}"
    tp, fld = _at(loc)
    why = f" ({fld.description})" if fld is not None and fld.description else ""
    value = err.get("input")
    if err["type"] == "string_pattern_mismatch":  # perhaps a key pasted in: never echo it
        return f"{_key(loc)} (value not shown): {_allowed(err, tp)}"
    return f"{_key(loc)} = {value!r}: {_allowed(err, tp)}{why}"


# -- rules across keys -------------------------------------------------------------------
def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{key} = {value!r}: {allowed}")


def _validate(p: Params) -> None:
    g = p.grid
    for i, s in enumerate(g.sizes):
        _check(s in p.sizes, f"grid.sizes[{i}]", s, f"unknown size; allowed: {sorted(p.sizes)} (keys of `sizes`)")
    for name, sz in p.sizes.items():
        _check(sz.hidden_size % sz.num_heads == 0, f"sizes.{name}.num_heads", sz.num_heads,
               f"must divide hidden_size ({sz.hidden_size})")
    for i, s in enumerate(g.sizes):
        _check(s in p.sft.lr_scale, "sft.lr_scale", dict(p.sft.lr_scale),
               f"has no entry for size {s!r} of grid.sizes; add `{s}: 1.0` (its SFT rate = sft.lr x this)")
    for name in p.sft.lr_scale:
        _check(name in p.sizes, f"sft.lr_scale.{name}", p.sft.lr_scale[name],
               f"unknown size; allowed: {sorted(p.sizes)} (keys of `sizes`)")
    fe = p.fetch
    _check(fe.skill_max_words >= fe.skill_min_words, "fetch.skill_max_words", fe.skill_max_words,
           f"must be >= fetch.skill_min_words ({fe.skill_min_words})")
    _check(fe.bios_max >= fe.bios_min, "fetch.bios_max", fe.bios_max, f"must be >= fetch.bios_min ({fe.bios_min})")
    _check(0 <= fe.sentence_rate <= 1 - fe.hedge_rate, "fetch.sentence_rate", fe.sentence_rate,
           f"must be in [0, 1 - fetch.hedge_rate] = [0, {1 - fe.hedge_rate:g}]")
    t = p.teacher
    _check(t.base_url == "embedded" or t.base_url.startswith(("http://", "https://")), "teacher.base_url",
           t.base_url, "must be 'embedded' or an http(s) URL such as http://127.0.0.1:8000/v1")
    _check(t.backoff_max >= t.backoff_base, "teacher.backoff_max", t.backoff_max,
           f"must be >= teacher.backoff_base ({t.backoff_base})")
    if t.budget_usd > 0:
        eff = resolve_world(p)
        needed = [eff.teacher.model, eff.eval.judge.nonexpert_model, eff.eval.judge.expert_model]
        missing = [m for m in needed if m not in t.price_per_1m_tokens]
        _check(not missing, "teacher.price_per_1m_tokens", sorted(t.price_per_1m_tokens),
               f"teacher.budget_usd is set, so every model called needs a price; add {missing}")
    if p.imitate.harvest_path:
        hp = Path(p.imitate.harvest_path)
        _check(hp.exists(), "imitate.harvest_path", p.imitate.harvest_path,
               "file not found (ShareGPT JSON/JSONL; put it under data/inputs/ so data.dvc tracks it)")
        _check(hp.is_file(), "imitate.harvest_path", p.imitate.harvest_path,
               "is a directory; name one ShareGPT JSON/JSONL file")
    if p.world == "embedded":
        for key in ("qa_shots", "mc_shots", "skill_shots"):
            shots = getattr(p.eval, key)
            _check(shots <= FEWSHOT_POOL, f"eval.{key}", shots,
                   f"must be <= {FEWSHOT_POOL} (the embedded world's few-shot pool per task)")
    s = p.sft
    if s.num_processes > 1:
        _check(bool(s.accelerate_config) and Path(s.accelerate_config).exists(), "sft.accelerate_config",
               s.accelerate_config, "sft.num_processes > 1 needs an accelerate config file, e.g. "
               "configs/accelerate/ddp.yaml (see configs/accelerate/)")
    j = p.eval.judge
    _check(j.base_url == "embedded" or j.base_url.startswith(("http://", "https://")), "eval.judge.base_url",
           j.base_url, "must be 'embedded' or an http(s) URL")
    _validate_bounds(p)
    if p.world == "hub":
        _validate_hub(p)


MAX_EVAL_BATCH = 4096  # lm-eval batch size at most: no eval set here is that large, and lm-eval pads a batch to it
MAX_SEQ_LEN = 2 ** 17  # tokens of an SFT sequence at most (no released model here holds more positions)
MAX_HIDDEN = 2 ** 16  # hidden_size / intermediate_size of an embedded size at most (a CPU world; 65536 wide is huge)


def _count_lines(path: str) -> int | None:
    try:
        return sum(1 for line in open(path, encoding="utf-8", errors="replace") if line.strip())
    except OSError:
        return None  # fetch names the missing file itself


def _validate_bounds(p: Params) -> None:
    """Values that pass their types but can never make sense (issue 37: each was accepted, then ran out of
    memory, was silently clamped, or gave a grid in another order)."""
    g = p.grid
    _check(g.amounts == sorted(g.amounts), "grid.amounts", g.amounts,
           f"must be in ascending order (each amount's data is a prefix of the next one's): {sorted(g.amounts)}")
    for key, ep in (("teacher.api_key_env", p.teacher.api_key_env), ("eval.judge.api_key_env", p.eval.judge.api_key_env)):
        _check(bool(ep), key, ep, "must name an environment variable, e.g. OPENAI_API_KEY (an endpoint that needs "
               "no key, such as the embedded one or a local vLLM, works with the variable unset)")
    _check(p.eval.batch_size <= MAX_EVAL_BATCH, "eval.batch_size", p.eval.batch_size, f"must be <= {MAX_EVAL_BATCH}")
    _check(p.hub.eval.batch_size <= MAX_EVAL_BATCH, "hub.eval.batch_size", p.hub.eval.batch_size,
           f"must be <= {MAX_EVAL_BATCH}")
    _check(p.hub.sft.max_seq_len <= MAX_SEQ_LEN, "hub.sft.max_seq_len", p.hub.sft.max_seq_len,
           f"must be <= {MAX_SEQ_LEN}")
    if p.world == "embedded":
        _check(p.sft.max_seq_len <= MAX_POSITIONS, "sft.max_seq_len", p.sft.max_seq_len,
               f"must be <= {MAX_POSITIONS} (the embedded base models hold {MAX_POSITIONS} positions)")
        _check(p.fetch.skill_docs > 0, "fetch.skill_docs", p.fetch.skill_docs,
               "must be > 0: the skill task (ig_skill) and the check 'the skill task is live' need word-reversal "
               "examples in pretraining")
        seeds = _count_lines(p.fetch.seed_qa)
        if seeds is not None:
            _check(p.imitate.local_shots <= seeds, "imitate.local_shots", p.imitate.local_shots,
                   f"must be <= {seeds}, the seed QA pairs in {p.fetch.seed_qa} (each local prompt shows that many)")
        for s in g.sizes:
            sz = p.sizes[s]
            for key in ("hidden_size", "intermediate_size"):
                _check(getattr(sz, key) <= MAX_HIDDEN, f"sizes.{s}.{key}", getattr(sz, key),
                       f"must be <= {MAX_HIDDEN} for an embedded base model (trained on this machine's CPU)")
    else:
        m = p.hub.local_seeds.max_rows
        _check(m == 0 or p.imitate.local_shots <= m, "imitate.local_shots", p.imitate.local_shots,
               f"must be <= hub.local_seeds.max_rows ({m}), the seeds each local prompt draws from")


def _validate_hub(p: Params) -> None:
    h = p.hub
    for s in p.grid.sizes:
        m = p.sizes[s].hub
        _check(bool(m.id), f"sizes.{s}.hub.id", m.id, "world: hub needs a model id (e.g. EleutherAI/pythia-160m) "
               "or a local directory for every size in grid.sizes")
        _check(bool(m.revision), f"sizes.{s}.hub.revision", m.revision,
               "must name a revision (a commit SHA pins it; 'main' follows the branch)")
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
    names = [t.name for t in h.tasks]
    _check(len(set(names)) == len(names), "hub.tasks", names, "must not list a task twice")
    roles = [t.role for t in h.tasks]
    _check(len(set(roles)) == len(roles), "hub.tasks", roles, "each role (qa, mc, skill) at most once")


def load_params(path: str | Path = "params.yaml") -> Params:
    """The params of ``path``, checked, with the chosen world's endpoints resolved (:func:`resolve_world`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the repository root (where dvc.yaml is)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    try:
        params = Params.model_validate(data)
        _validate(params)
    except ValidationError as e:
        raise ConfigError(f"{path}: {_one_line(e.errors()[0])}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    params._raw = data
    params._source = str(path)
    check_deps_world(params)
    h = params.hub  # the keys these variables hold are masked in everything a stage writes (core.redact)
    redact.register_env(params.teacher.api_key_env, params.eval.judge.api_key_env, h.teacher.api_key_env,
                        h.judge.api_key_env)
    return resolve_world(params)


# dvc.yaml's first line: the world its stages' code deps are the import closures for (imitation_gap.tools.deps)
DEPS_HEADER = "# Code deps for world: {world} (generated: python -m imitation_gap.tools.deps --write; see its docstring)"
DEPS_HEADER_RE = re.compile(r"^# Code deps for world: (\w+)")


def check_deps_world(p: Params, dvc_yaml: Path = Path("dvc.yaml")) -> None:
    """In a stage that DVC runs: stop if ``dvc.yaml``'s code deps were written for another world than
    ``p.world`` (they would miss this world's code, and a change to it would re-run nothing)."""
    if not os.environ.get("DVC_STAGE") or not dvc_yaml.exists():
        return
    with dvc_yaml.open() as f:
        m = DEPS_HEADER_RE.match(f.readline())
    if m and m.group(1) != p.world:
        raise ConfigError(f"world = {p.world!r}, but dvc.yaml's code deps are those of world {m.group(1)!r}: run "
                          f"`python -m imitation_gap.tools.deps --write --world {p.world}` first (then `dvc repro` "
                          f"or `dvc exp run -S world={p.world}`)")


def resolve_world(p: Params) -> Params:
    """The effective params of the chosen world.

    In the hub world the teacher and the judge are the endpoints of ``hub.teacher`` /
    ``hub.judge``, and the SFT and eval settings that depend on the model's scale come from the
    hub recipe (``hub.sft``, ``hub.eval``: LLaMA-class values instead of the tiny models'); every
    stage then reads ``p.teacher``, ``p.eval`` and ``p.sft`` alone, so switching ``world`` is the
    only change a user makes (:func:`resolve_raw` does the same on the plain mapping).
    """
    if p.world != "hub":
        return p
    t = p.hub.teacher
    teacher = p.teacher.model_copy(update={"base_url": t.base_url, "model": t.model, "api_key_env": t.api_key_env})
    sft = p.sft.model_copy(update=dict(p.hub.sft))
    ev = p.eval.model_copy(update={"judge": p.hub.judge, **dict(p.hub.eval)})
    out = p.model_copy(update={"teacher": teacher, "eval": ev, "sft": sft})
    out._raw = resolve_raw(p._raw) if p._raw else {}
    return out


def resolve_raw(raw: dict) -> dict:
    """:func:`resolve_world` on the plain mapping of ``params.yaml`` (what the runner and MLflow see)."""
    if raw.get("world") != "hub":
        return raw
    import copy

    out = copy.deepcopy(raw)
    hub = out.get("hub") or {}
    for section in ("sft", "eval"):
        out.setdefault(section, {}).update(copy.deepcopy(hub.get(section) or {}))
    out["eval"]["judge"] = copy.deepcopy(hub.get("judge", out["eval"].get("judge")))
    if hub.get("teacher"):
        out.setdefault("teacher", {}).update({k: hub["teacher"][k] for k in ("base_url", "model", "api_key_env")
                                              if k in hub["teacher"]})
    return out


# ---------------------------------------------------------------------------------------
def run_name(size: str, kind: str | None = None, amount: int | None = None, seed: int = 0) -> str:
    """Name of a model / metrics file: ``L-base-s0`` (chain 0's base model) or ``L-broad-8000-s0``."""
    if kind is None:
        return f"{size}-base-s{seed}"
    return f"{size}-{kind}-{amount}-s{seed}"


def base_dir(size: str, seed: int) -> Path:
    """Where chain ``seed``'s base model of ``size`` lives: ``models/base/L-s0``."""
    return Path("models/base") / f"{size}-s{seed}"


def chain_seed(world_seed: int, chain: int) -> int:
    """The training seed of replicated chain ``chain`` (``grid.seeds``) in the world of ``seed``.

    A chain is one pretraining run per size and every imitation model fine-tuned from it; chains
    differ in initialisation and data order, so the CIs over chains cover both sources of
    variance.  Chain c of world 0 trains with seed c."""
    import hashlib

    if world_seed == 0:
        return chain
    return int.from_bytes(hashlib.sha256(f"{world_seed}/{chain}".encode()).digest()[:4], "big") >> 1


def check_cell(p: Params, size: str, kind: str | None = None, amount: int | None = None) -> None:
    """Validate a CLI cell against the params (a stage called with a size not in `sizes`, ...)."""
    if size not in p.sizes:
        raise ConfigError(f"--size {size!r}: unknown size; allowed: {sorted(p.sizes)} (keys of `sizes` in params.yaml)")
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"--kind {kind!r}: must be one of {list(KINDS)}")
    if amount is not None and amount <= 0:
        raise ConfigError(f"--amount {amount!r}: must be an integer > 0")
