"""The layout keeps the pipeline reproducible by construction.

* Each stage's code deps in ``dvc.yaml`` are exactly the project modules its command imports,
  transitively, with the chosen world's part (``python -m imitation_gap.tools.deps``): no module
  missing, none extra.  So a change re-runs the stages it can affect and no other: an edit to the hub
  world re-runs nothing of the embedded study; the report's plots, the report alone; the embedded
  raters, the stages that import them and no pretraining.
* The package's imports form no cycle and never go up a layer:
  core < (llm, worlds, imitation) < analysis < stages < (runner, tools); among packages of one layer,
  imports run one way only (worlds may use imitation), and the two worlds never import each other.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_repo, run
from imitation_gap.tools.deps import closure, differences, imports, modules, stage_entries

SRC = ROOT / "src"
PKG = "imitation_gap"
LAYERS = {"core": 0, "llm": 1, "worlds": 1, "imitation": 1, "analysis": 2, "stages": 3, "runner": 4, "tools": 4}


def copy_src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(SRC / PKG, src / PKG, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def test_every_stage_s_code_deps_are_its_import_closure():
    assert differences(ROOT / "dvc.yaml", "embedded", SRC) == []


def test_an_import_missing_from_the_deps_is_caught(tmp_path):
    """A copy of the package where the embedded pretraining imports a new module: base lacks it."""
    src = copy_src(tmp_path)
    (src / PKG / "extra").mkdir()
    (src / PKG / "extra" / "helper.py").write_text("X = 1\n")
    f = src / PKG / "worlds" / "embedded" / "pretrain.py"
    f.write_text(f.read_text() + "\n\ndef _late():\n    from ...extra.helper import X\n\n    return X\n")
    assert differences(ROOT / "dvc.yaml", "embedded", src) == \
        [f"base: missing src/{PKG}/extra/helper.py (its command imports it)"]


def test_a_dep_the_stage_never_imports_is_caught(tmp_path):
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    dvc["stages"]["eval-teacher"]["deps"].append(f"src/{PKG}/analysis/plots.py")
    path = tmp_path / "dvc.yaml"
    path.write_text((ROOT / "dvc.yaml").read_text().split("\n", 1)[0] + "\n" + yaml.safe_dump(dvc))
    assert differences(path, "embedded", SRC) == \
        [f"eval-teacher: extra src/{PKG}/analysis/plots.py (its command never imports it)"]


def test_no_stage_of_one_world_depends_on_the_other_world():
    mods = modules()
    for world, other in (("embedded", "hub"), ("hub", "embedded")):
        for stage, entry in stage_entries(ROOT / "dvc.yaml").items():
            part = f"{PKG}.worlds.{world}.{entry.rsplit('.', 1)[-1]}"
            reached = closure([entry, part], mods)
            assert part in reached and not [m for m in reached if m.startswith(f"{PKG}.worlds.{other}")], stage
            assert not [m for m in reached if m.split(".")[1] in ("runner", "tools")], f"{stage} imports runner code"
            assert f"{PKG}.core.handoff" in reached  # through run_cli
    assert imports(f"{PKG}.core.handoff", mods) == set()


def deps_tool(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "imitation_gap.tools.deps", *args], repo, check=check)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("layout") / "repo")


def stages_touched(repo: Path, rel: str) -> list[str]:
    """The stages of the tiny grid (matrix expanded, by DVC itself) whose deps cover file ``rel``: those that
    `dvc status` lists as changed after an edit to it."""
    code = ("import sys; from dvc.repo import Repo; r = Repo(sys.argv[1]); f = sys.argv[2]\n"
            "for s in r.index.stages:\n"
            "    if any(f == d.def_path or f.startswith(d.def_path.rstrip('/') + '/') for d in s.deps):\n"
            "        print(s.addressing)\n")
    return sorted(run([sys.executable, "-c", code, str(repo), rel], repo).stdout.split())


def test_an_edit_re_runs_exactly_the_stages_that_import_it(tiny_repo):
    every = sorted(run(["dvc", "stage", "list", "--name-only"], tiny_repo).stdout.split())
    hub = [f.relative_to(ROOT).as_posix() for f in sorted((SRC / PKG / "worlds" / "hub").rglob("*.py"))]
    assert hub and all(stages_touched(tiny_repo, f) == [] for f in hub)
    assert stages_touched(tiny_repo, f"src/{PKG}/analysis/plots.py") == ["report"]
    raters = stages_touched(tiny_repo, f"src/{PKG}/worlds/embedded/raters.py")
    assert raters == sorted(s for s in every if s.startswith(("imitate-dataset", "eval-", "report")))
    assert not [s for s in raters if s.startswith(("base@", "fetch", "sft@"))]
    assert len(stages_touched(tiny_repo, f"src/{PKG}/core/config.py")) == len(every)  # every stage reads params


def test_the_generator_writes_the_closures_and_refuses_a_module_that_fails_to_import(tmp_path, tiny_repo):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo, ignore=shutil.ignore_patterns(".dvc", ".git"))
    text = (repo / "dvc.yaml").read_text()
    (repo / "dvc.yaml").write_text(text.replace(f"      - src/{PKG}/worlds/embedded/pretrain.py\n", "")
                                   .replace(f"      - src/{PKG}/stages/report.py\n",
                                            f"      - src/{PKG}/stages/report.py\n      - src/{PKG}/llm/client.py\n"))
    r = deps_tool(repo, check=False)
    assert r.returncode == 1 and "base: missing" in r.stderr and "report: extra" in r.stderr
    deps_tool(repo, "--write")
    assert (repo / "dvc.yaml").read_text() == text  # comments, data deps and order as they were
    assert deps_tool(repo).returncode == 0

    broken = repo / "src" / PKG / "worlds" / "embedded" / "sft.py"
    broken.write_text(broken.read_text() + "\nimport no_such_module_here\n")
    (repo / "dvc.yaml").write_text(text.replace(f"      - src/{PKG}/stages/sft.py\n", ""))
    before = (repo / "dvc.yaml").read_text()
    r = deps_tool(repo, "--write", check=False)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"deps: {PKG}.worlds.embedded.sft does not import (ModuleNotFoundError: No module " \
                               "named 'no_such_module_here'); fix it, then run this again"
    assert (repo / "dvc.yaml").read_text() == before

    r = deps_tool(repo, "--world", "moon", check=False)
    assert r.returncode == 2 and r.stderr.strip() == \
        f"deps: world 'moon' has no package under src/{PKG}/worlds/; the worlds: ['embedded', 'hub']"


def test_a_stage_run_in_another_world_than_its_deps_stops_in_one_line(tiny_repo, monkeypatch):
    from imitation_gap.core.config import check_deps_world, load_params
    from imitation_gap.core.errors import ConfigError

    p = load_params(tiny_repo / "params.yaml")
    monkeypatch.setenv("DVC_STAGE", "sft@S-local-300-0")  # as DVC runs a stage's command
    check_deps_world(p, tiny_repo / "dvc.yaml")  # the world its deps are for
    with pytest.raises(ConfigError, match=r"world = 'hub', but dvc.yaml's code deps are those of world 'embedded': "
                                          r"run `python -m imitation_gap.tools.deps --write --world hub` first"):
        check_deps_world(p.model_copy(update={"world": "hub"}), tiny_repo / "dvc.yaml")
    monkeypatch.delenv("DVC_STAGE")
    check_deps_world(p.model_copy(update={"world": "hub"}), tiny_repo / "dvc.yaml")  # outside DVC: no check


def layer(module: str) -> int:
    parts = module.split(".")
    assert len(parts) > 1 and parts[1] in LAYERS, f"{module} is in no layer: put it in one of {sorted(LAYERS)}"
    return LAYERS[parts[1]]


def test_no_upward_import_and_no_cycle():
    mods = modules()
    graph = {m: imports(m, mods) - {m} for m in mods}
    up = [f"{m} -> {t}" for m, ts in graph.items() for t in ts if layer(t) > layer(m)]
    assert not up, f"imports from a lower layer to a higher one: {up}"
    # packages of one layer import each other one way only (worlds -> imitation, never back)
    pkgs = {(m.split(".")[1], t.split(".")[1]) for m, ts in graph.items() for t in ts}
    assert not [(a, b) for a, b in pkgs if a != b and (b, a) in pkgs], "two packages import each other"
    between = [f"{m} -> {t}" for m, ts in graph.items() for t in ts
               if {m.split(".")[:3][-1], t.split(".")[:3][-1]} == {"embedded", "hub"} and m.split(".")[1] == "worlds"]
    assert not between, f"the worlds import each other: {between}"
    # no cycle of modules (depth-first search; an edge back to a module on the stack closes one)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            assert state.get(t) != 1, "import cycle: " + " -> ".join(stack[stack.index(t):] + [t])
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
