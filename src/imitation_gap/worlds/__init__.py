"""The two worlds behind one protocol: what the stages ask of the world they run in.

``world`` in ``params.yaml`` picks one, and :func:`get_world` returns it:

* ``embedded`` (:mod:`.embedded`): a synthetic world of invented people that runs offline on a
  CPU: it generates its corpus, pretrains its base models, serves its teacher and raters
  on 127.0.0.1 and grades answers by its facts;
* ``hub`` (:mod:`.hub`): real data sets and base models from the Hugging Face hub, a teacher
  and judge behind any OpenAI-compatible endpoint, real lm-eval tasks.

Every stage runs the same code for both: it calls :func:`get_world` and the members of
:class:`World`, :func:`endpoints`, and the judge's prompt format (``JUDGE_TEMPLATE``, MT-bench's
pairwise prompt, and ``VERDICT_RE``, its ``[[A]]``/``[[B]]``/``[[C]]`` verdict), nothing else of
this package, and never asks which world it is in.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Protocol

from ..core.config import HubTask, Params
from ..imitation.build import Prompts, Transcripts
from .embedded.raters import JUDGE_TEMPLATE, VERDICT_RE  # noqa: F401 - the judge's prompt and answer, in any world

RAW = Path("data/raw")


class World(Protocol):
    """What a world does for the stages (one member per world-dependent step)."""

    eval_env: dict[str, str]  # environment defaults of the eval stage (set before its libraries load)
    f5_metrics: tuple[str, str]  # report F5: the metric that shows the teacher's style, and the one of facts
    example_kind: str  # report: the kind of preference prompt shown side by side

    def fetch(self) -> dict:
        """Stage ``fetch``: write ``data/raw/`` (atomically) and log the run to MLflow; return its stats."""

    def base_model(self, size: str, chain: int, out: Path) -> dict:
        """Stage ``base@<size>-<chain>``: pretrain (replicated chain ``chain`` of ``grid.seeds``) or download the
        base model into ``out`` (atomically, MLflow run included); return its stats."""

    def load_kwargs(self) -> dict:
        """``from_pretrained`` keyword arguments for a checkpoint of this world (dtype, remote code)."""

    def held_out_names(self) -> set[str]:
        """Names no imitation prompt may contain (the held-out people of the embedded world)."""

    def imitation_source(self, kind: str) -> Transcripts | Prompts:
        """Imitation data of ``kind`` (broad, local): existing transcripts, or prompts to ask the teacher."""

    def answer_problem(self, kind: str, answer: str) -> str | None:
        """Why a teacher answer is not in this world's teacher's format (a short reason, counted as a malformed
        response and never cached), or None; ``kind``: ``broad`` or ``local`` imitation data, or ``chat`` (an
        answer to a preference prompt)."""

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

    def styled(self, answer: str) -> bool:
        """Whether ``answer`` carries the teacher's style (its phrases)."""

    def grade(self, prompt: str, answer: str) -> bool | None:
        """Whether ``answer`` is right (None: this world cannot tell)."""

    def card_data(self, size: str) -> dict:
        """What a base model's card says it learned from."""


def get_world(p: Params) -> World:
    """The world that ``p.world`` names."""
    if p.world == "hub":
        from .hub import HubWorld

        return HubWorld(p)
    from .embedded import EmbeddedWorld

    return EmbeddedWorld(p)


class Endpoint(NamedTuple):
    """A teacher or judge endpoint: its URL, and its identity in response-cache keys (None: its host)."""

    url: str
    cache_host: str | None = None
    embedded: bool = False


@contextmanager
def endpoints(*base_urls: str) -> Iterator[list[Endpoint]]:
    """The endpoints of the ``base_url`` params given, for the block: ``embedded`` starts the embedded
    teacher and raters on 127.0.0.1 (one server for all), any other value is an OpenAI-compatible URL."""
    with ExitStack() as stack:
        served = None
        if "embedded" in base_urls:
            from .embedded.teacher import embedded_cache_id, embedded_endpoint

            served = Endpoint(stack.enter_context(embedded_endpoint(RAW / "world.json", RAW / "tokenizer")),
                              embedded_cache_id(RAW / "world.json"), embedded=True)
        yield [served if url == "embedded" else Endpoint(url) for url in base_urls]
