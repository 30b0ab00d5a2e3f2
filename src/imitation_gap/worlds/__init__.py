"""The two worlds behind one protocol: what each stage asks of the world it runs in.

``world`` in ``params.yaml`` picks one:

* ``embedded`` (:mod:`.embedded`): a synthetic world of invented people that runs offline on a
  CPU: it generates its corpus, pretrains its base models, serves its teacher and raters
  on 127.0.0.1 and grades answers by its facts;
* ``hub`` (:mod:`.hub`): real data sets and base models from the Hugging Face hub, a teacher
  and judge behind any OpenAI-compatible endpoint, real lm-eval tasks.

Every stage runs the same code for both.  Stage ``stages/<stage>.py`` calls ``get_world(p, "<stage>")``,
which imports ``worlds/<world>/<stage>.py`` *by name* and returns its ``World``: the protocol of that
stage below (:class:`FetchWorld`, ...).  A stage never asks which world it is in, and it imports the
code of the chosen world's part alone: so a stage's ``dvc.yaml`` deps (``python -m imitation_gap.tools.deps``)
hold no module of the other world, and an edit to the hub world re-runs nothing of the embedded study.
What both worlds share lives in :mod:`.common` (the judge's prompt, the style detectors) and
:mod:`imitation_gap.imitation.records` (the imitation records); neither world imports the other.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from importlib import import_module
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Protocol

from ..core.config import HubTask, Params
from ..core.errors import ConfigError
from ..imitation.records import Prompts, Transcripts

# the stages that ask something of the world: worlds/<world>/<stage>.py is the world's part for each
STAGES = ("fetch", "base", "imitate_dataset", "sft", "evaluate", "report")


class FetchWorld(Protocol):
    def fetch(self) -> dict:
        """Stage ``fetch``: write ``data/raw/`` (atomically) and log the run to MLflow; return its stats."""


class BaseWorld(Protocol):
    def base_model(self, size: str, chain: int, out: Path) -> dict:
        """Stage ``base@<size>-<chain>``: pretrain (replicated chain ``chain`` of ``grid.seeds``) or download the
        base model into ``out`` (atomically, MLflow run included); return its stats."""


class ServesEndpoints(Protocol):
    """A world part whose stage calls endpoints.  The embedded world's also has ``serve_embedded()``: a context
    manager of the block's ``(base URL, cache identity)`` of the endpoint that the ``base_url`` value
    ``embedded`` names (its teacher and raters, on 127.0.0.1)."""


class ImitateWorld(ServesEndpoints, Protocol):
    def held_out_names(self) -> set[str]:
        """Names no imitation prompt may contain (the held-out people of the embedded world)."""

    def imitation_source(self, kind: str) -> Transcripts | Prompts:
        """Imitation data of ``kind`` (broad, local): existing transcripts, or prompts to ask the teacher."""

    def answer_problem(self, kind: str, answer: str) -> str | None:
        """Why a teacher answer is not in this world's teacher's format (a short reason, counted as a malformed
        response and never cached), or None; ``kind``: ``broad`` or ``local`` imitation data, or ``chat`` (an
        answer to a preference prompt)."""


class SftWorld(Protocol):
    def load_kwargs(self) -> dict:
        """``from_pretrained`` keyword arguments for a checkpoint of this world (dtype, remote code)."""


class Grades(Protocol):
    def styled(self, answer: str) -> bool:
        """Whether ``answer`` carries the teacher's style (its phrases)."""

    def grade(self, prompt: str, answer: str) -> bool | None:
        """Whether ``answer`` is right (None: this world cannot tell)."""


class EvalWorld(ServesEndpoints, Grades, Protocol):
    eval_env: dict[str, str]  # environment defaults of the eval stage (set before its libraries load)

    def answer_problem(self, kind: str, answer: str) -> str | None:
        """As :meth:`ImitateWorld.answer_problem`, for the teacher's answers to the preference prompts."""

    def eval_plan(self, is_teacher: bool) -> tuple[Any, list[HubTask], dict[str, str], dict[str, Any]]:
        """The capability tasks of an eval stage (of the teacher through its API, or of a checkpoint): lm-eval's
        ``TaskManager``, the tasks to run (each fills a role: qa, mc or skill), the roles skipped with the
        reason, and further keyword arguments of ``simple_evaluate``."""

    def checkpoint_lm(self, model_dir: Path) -> Any:
        """An lm-eval model for a checkpoint."""

    def teacher_lm(self, base_url: str) -> Any:
        """An lm-eval model for the teacher behind ``base_url``."""

    def style(self, prompts: list[dict], answers: list[str], reference: list[str] | None) -> dict:
        """Style metrics of ``answers`` (and, given the teacher's ``reference`` answers, their likeness)."""


class ReportWorld(Grades, Protocol):
    f5_metrics: tuple[str, str]  # report F5: the metric that shows the teacher's style, and the one of facts
    example_kind: str  # report: the kind of preference prompt shown side by side

    def card_data(self, size: str) -> dict:
        """What a base model's card says it learned from."""


def get_world(p: Params, stage: str) -> Any:
    """The part of world ``p.world`` that stage ``stage`` (one of :data:`STAGES`) runs:
    ``imitation_gap.worlds.<world>.<stage>.World(p)``, imported by name."""
    if stage not in STAGES:
        raise ValueError(f"no world part for stage {stage!r}; the stages with one: {list(STAGES)}")
    return import_module(f"{__name__}.{p.world}.{stage}").World(p)


class Endpoint(NamedTuple):
    """A teacher or judge endpoint: its URL, and its identity in response-cache keys (None: its host)."""

    url: str
    cache_host: str | None = None
    embedded: bool = False


@contextmanager
def endpoints(world: ServesEndpoints, *base_urls: str) -> Iterator[list[Endpoint]]:
    """The endpoints of the ``base_url`` params given, for the block: ``embedded`` starts the embedded
    teacher and raters on 127.0.0.1 (one server for all, through ``world``), any other value is an
    OpenAI-compatible URL."""
    with ExitStack() as stack:
        served = None
        if "embedded" in base_urls:
            if not hasattr(world, "serve_embedded"):
                raise ConfigError("base_url 'embedded' names the embedded world's teacher, and this world has none: "
                                  "give the http(s) URL of an OpenAI-compatible API")
            served = Endpoint(*stack.enter_context(world.serve_embedded()), embedded=True)
        yield [served if url == "embedded" else Endpoint(url) for url in base_urls]
