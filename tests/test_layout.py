"""The layout keeps the pipeline reproducible by construction.

* Every project module that a stage's command imports, transitively (function-level imports and
  constant ``import_module("...")`` strings included, and the packages above each module, which
  Python runs first), lies under that stage's ``deps`` in ``dvc.yaml``: a code change re-runs
  every stage it can affect.
* A stage's code deps are its own module in ``stages/`` plus whole package folders, so a new
  import inside those folders cannot escape; the runner is no stage's dep (and no stage imports it).
* Every folder among a stage's deps holds a module its command imports: a change to code the stage
  never runs (the report's rendering, say) re-runs no stage but those that import it.
* The package's imports form no cycle and never go up a layer:
  core < (llm, worlds, imitation) < analysis < stages < runner; among llm, worlds and imitation,
  the packages themselves import each other in one direction only (worlds may use imitation).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from conftest import ROOT

SRC = ROOT / "src"
PKG = "imitation_gap"
LAYERS = {"core": 0, "llm": 1, "worlds": 1, "imitation": 1, "analysis": 2, "stages": 3, "runner": 4}


def modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__.py``)."""
    out = {}
    for f in sorted((src / PKG).rglob("*.py")):
        name = ".".join(f.relative_to(src).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def imports(name: str, mods: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports by name: top-level and function-level ``import`` /
    ``from ... import`` (a name that is a submodule counts as that module) and constant
    ``import_module("...")`` strings."""
    f = mods[name]
    base = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == PKG}
        elif isinstance(node, ast.ImportFrom):
            mod = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            if mod.split(".")[0] != PKG:
                continue
            subs = {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods}
            out |= subs if subs and len(subs) == len(node.names) else subs | {mod}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith(PKG)):
            out.add(node.args[0].value)
    return {m for m in out if m in mods}


def with_parents(names: set[str], mods: dict[str, Path]) -> set[str]:
    """``names`` and every package above them (Python runs a package's ``__init__`` before its modules)."""
    parts = {".".join(n.split(".")[:i]) for n in names for i in range(1, len(n.split(".")) + 1)}
    return {m for m in parts if m in mods}


def closure(entry: str, mods: dict[str, Path]) -> set[str]:
    seen, todo = set(), [entry]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += with_parents(imports(m, mods) | {m}, mods) - seen
    return seen


def stages(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, tuple[str, list[str]]]:
    """Stage -> (the module its command runs, its deps) for every stage that runs ``python -m imitation_gap...``."""
    out = {}
    for name, st in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        body = st.get("do", st)
        m = re.search(r"python3?\s+-m\s+([\w.]+)", body["cmd"])
        if m and m.group(1).startswith(PKG):
            deps = [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])]
            out[name] = (m.group(1), [d.rstrip("/") for d in deps])
    return out


def imported_files(entry: str, mods: dict[str, Path], src: Path = SRC) -> list[str]:
    """Repository-relative paths of every project module that running ``entry`` imports."""
    return sorted(mods[m].relative_to(src.parent).as_posix() for m in closure(entry, mods))


def under(path: str, dep: str) -> bool:
    """Whether a DVC dep (a file or a folder) covers ``path``."""
    return path == dep or path.startswith(dep + "/")


def uncovered(dvc_yaml: Path = ROOT / "dvc.yaml", src: Path = SRC) -> list[str]:
    """``'<stage>: <file>'`` for each project file a stage's command imports that its deps do not cover."""
    mods = modules(src)
    out = []
    for stage, (entry, deps) in stages(dvc_yaml).items():
        assert entry in mods, f"{stage}: its command runs {entry}, which is not a module of src/{PKG}"
        out += [f"{stage}: {rel} (imported by its command, not in its deps)"
                for rel in imported_files(entry, mods, src) if not any(under(rel, d) for d in deps)]
    return out


def unused(dvc_yaml: Path = ROOT / "dvc.yaml", src: Path = SRC) -> list[str]:
    """``'<stage>: <dep>'`` for each code dep (under ``src/``) that holds no module the stage's command imports."""
    mods = modules(src)
    out = []
    for stage, (entry, deps) in stages(dvc_yaml).items():
        files = imported_files(entry, mods, src)
        out += [f"{stage}: {d} (imports nothing from it)" for d in deps
                if d.startswith("src/") and not any(under(f, d) for f in files)]
    return out


def test_every_module_a_stage_imports_is_in_its_deps():
    assert uncovered() == []


def test_an_import_outside_the_deps_is_caught(tmp_path):
    """The check above can fail: a copy of the package where a world imports a module no stage lists."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(SRC / PKG, src / PKG, ignore=shutil.ignore_patterns("__pycache__"))
    (src / PKG / "extra").mkdir()
    (src / PKG / "extra" / "helper.py").write_text("X = 1\n")
    world = src / PKG / "worlds" / "hub" / "models.py"
    world.write_text(world.read_text() + "\n\ndef _late():\n    from ...extra.helper import X\n\n    return X\n")
    missing = uncovered(src=src)
    assert f"fetch: src/{PKG}/extra/helper.py (imported by its command, not in its deps)" in missing
    assert len({m.split(":")[0] for m in missing}) == len(stages())  # every stage reaches the hub world


def test_every_code_dep_is_imported_by_its_stage():
    """No stage re-runs for code it never imports: editing the report's analysis re-runs the report only,
    not the 64 evaluations."""
    assert unused() == []
    evals = {n for n in stages() if n.startswith("eval-")}
    assert evals and all(f"src/{PKG}/analysis" not in stages()[n][1] for n in evals)


def test_a_dep_the_stage_never_imports_is_caught(tmp_path):
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    dvc["stages"]["eval-teacher"]["deps"].append(f"src/{PKG}/analysis")
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump(dvc))
    assert unused(path) == [f"eval-teacher: src/{PKG}/analysis (imports nothing from it)"]


def test_code_deps_are_the_stage_module_and_whole_folders():
    pkg_dir = f"src/{PKG}"
    for stage, (entry, deps) in stages().items():
        code = [d for d in deps if d.startswith("src/")]
        own = entry.replace(".", "/") + ".py"
        assert f"src/{own}" in code, f"{stage}: its module src/{own} is not a dep"
        for d in code:
            if d == f"src/{own}":
                continue
            assert (ROOT / d).is_dir() and (ROOT / d).parent == ROOT / pkg_dir, \
                f"{stage}: dep {d} is neither its own module nor a whole folder of {pkg_dir}"
            assert not d.endswith(("/runner", "/stages")), f"{stage}: {d} must not be a stage's dep"


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


def test_only_the_handoff_hook_leads_from_stage_code_to_the_runner():
    mods = modules()
    for stage, (entry, _) in stages().items():
        reached = closure(entry, mods)
        assert not [m for m in reached if m.split(".")[1] == "runner"], f"{stage} imports runner code"
        assert f"{PKG}.core.handoff" in reached  # through run_cli
    assert imports(f"{PKG}.core.handoff", mods) == set()
