"""Each stage's code deps in ``dvc.yaml``: exactly the project modules that its command imports.

A stage's code is the import closure of its module (``stages/<stage>.py``) and of the chosen world's part for
it (``worlds/<world>/<stage>.py``, which :func:`imitation_gap.worlds.get_world` imports by name): every
``import`` and ``from ... import`` of the package, at module level or inside a function, constant
``import_module("...")`` strings, the packages above each module (Python runs them first), and the folders a
module reads beside itself (``Path(__file__).parent / "tasks"``: the embedded world's lm-eval task YAMLs).
So a change re-runs the stages whose code it touches, and no other: an edit to the hub world re-runs nothing
of the embedded study, and an edit to the report's plots re-runs the report alone.

    python -m imitation_gap.tools.deps            # compare dvc.yaml with the closures; exit 1 if they differ
    python -m imitation_gap.tools.deps --write    # write them into dvc.yaml (the world of params.yaml)
    python -m imitation_gap.tools.deps --write --world hub   # before `dvc exp run -S world=hub`

Only the lines of ``src/imitation_gap/`` in each stage's ``deps:`` are rewritten; data deps, comments and
everything else stay as they are.  ``dvc.yaml``'s first line records the world the deps are for, and a stage
that DVC runs in another world stops with one line naming this command (:func:`imitation_gap.core.config.load_params`).
The runner (``runner/``) and these tools are no stage's deps: they never change what a stage computes.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import sys
from pathlib import Path

import yaml

from ..core.config import DEPS_HEADER as HEADER, DEPS_HEADER_RE as HEADER_RE

PKG = "imitation_gap"
SRC = Path("src")


class DepsError(Exception):
    """A stage whose deps cannot be computed (its module does not import, or is not in the package)."""


def modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__.py``)."""
    out = {}
    for f in sorted((src / PKG).rglob("*.py")):
        name = ".".join(f.relative_to(src).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _tree(f: Path) -> ast.Module:
    return ast.parse(f.read_text(), filename=str(f))


def imports(name: str, mods: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports by name: top-level and function-level ``import`` /
    ``from ... import`` (a name that is a submodule counts as that module) and constant
    ``import_module("...")`` strings."""
    f = mods[name]
    base = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(_tree(f)):
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


def folders_read(name: str, mods: dict[str, Path]) -> set[Path]:
    """Folders beside module ``name`` that it reads: ``Path(__file__).parent / "<folder>"``."""
    out = set()
    for node in ast.walk(_tree(mods[name])):
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant)
                and isinstance(node.left, ast.Attribute) and node.left.attr == "parent"
                and isinstance(node.left.value, ast.Call) and getattr(node.left.value.func, "id", "") == "Path"
                and node.left.value.args and getattr(node.left.value.args[0], "id", "") == "__file__"):
            folder = mods[name].parent / str(node.right.value)
            if folder.is_dir():
                out.add(folder)
    return out


def with_parents(names: set[str], mods: dict[str, Path]) -> set[str]:
    """``names`` and every package above them (Python runs a package's ``__init__`` before its modules)."""
    parts = {".".join(n.split(".")[:i]) for n in names for i in range(1, len(n.split(".")) + 1)}
    return {m for m in parts if m in mods}


def closure(entries: list[str], mods: dict[str, Path]) -> set[str]:
    """Every project module that importing ``entries`` runs."""
    seen: set[str] = set()
    todo = list(with_parents(set(entries), mods))
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += with_parents(imports(m, mods) | {m}, mods) - seen
    return seen


def stage_entries(dvc_yaml: Path) -> dict[str, str]:
    """Stage -> the module its command runs, for every stage that runs ``python -m imitation_gap...``."""
    out = {}
    for name, st in (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).items():
        m = re.search(r"python3?\s+-m\s+([\w.]+)", st.get("do", st).get("cmd", ""))
        if m and m.group(1).startswith(PKG):
            out[name] = m.group(1)
    return out


def code_deps(entry: str, world: str, mods: dict[str, Path], src: Path = SRC) -> list[str]:
    """The code deps of a stage that runs ``entry`` in ``world``: repository-relative files and folders."""
    if entry not in mods:
        raise DepsError(f"{entry}: not a module of src/{PKG} (a stage's command runs it)")
    part = f"{PKG}.worlds.{world}.{entry.rsplit('.', 1)[-1]}"
    names = closure([entry] + ([part] if part in mods else []), mods)
    folders = {d for n in names for d in folders_read(n, mods)}
    files = {mods[n] for n in names if not any(folder in mods[n].parents for folder in folders)}
    return sorted((SRC / p.relative_to(src)).as_posix() for p in files | folders)


def check_imports(entries: list[str], world: str, src: Path = SRC) -> None:
    """Import each stage module and its world part, as the stage does: a module that fails to import has no
    closure worth writing."""
    sys.path.insert(0, str(src.resolve()))
    for entry in sorted(set(entries)):
        for name in (entry, f"{PKG}.worlds.{world}.{entry.rsplit('.', 1)[-1]}"):
            if name != entry and not (src / Path(*name.split("."))).with_suffix(".py").exists():
                continue
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 - any failure: one line, and nothing written
                raise DepsError(f"{name} does not import ({type(e).__name__}: {e}); fix it, then run this again") \
                    from None


def computed(dvc_yaml: Path, world: str, src: Path = SRC) -> dict[str, list[str]]:
    """Stage -> its code deps, from the import graph."""
    mods = modules(src)
    return {stage: code_deps(entry, world, mods, src) for stage, entry in stage_entries(dvc_yaml).items()}


def declared(dvc_yaml: Path) -> dict[str, list[str]]:
    """Stage -> the code deps (under ``src/``) that ``dvc.yaml`` lists."""
    out = {}
    for name, st in (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).items():
        deps = [d if isinstance(d, str) else next(iter(d)) for d in st.get("do", st).get("deps", [])]
        out[name] = sorted(d.rstrip("/") for d in deps if d.startswith(f"src/{PKG}"))
    return out


def declared_world(dvc_yaml: Path) -> str | None:
    """The world that ``dvc.yaml``'s code deps were generated for (its first line), or None."""
    first = dvc_yaml.read_text().split("\n", 1)[0] if dvc_yaml.exists() else ""
    m = HEADER_RE.match(first)
    return m.group(1) if m else None


def differences(dvc_yaml: Path, world: str, src: Path = SRC) -> list[str]:
    """``'<stage>: missing <dep>'`` / ``'<stage>: extra <dep>'`` for every difference from the closures."""
    want, have = computed(dvc_yaml, world, src), declared(dvc_yaml)
    out = []
    for stage, deps in want.items():
        out += [f"{stage}: missing {d} (its command imports it)" for d in deps if d not in have.get(stage, [])]
        out += [f"{stage}: extra {d} (its command never imports it)" for d in have.get(stage, []) if d not in deps]
    if declared_world(dvc_yaml) != world:
        out.append(f"dvc.yaml: its first line must be {HEADER.format(world=world)!r}")
    return out


def rewrite(text: str, deps: dict[str, list[str]], world: str) -> str:
    """``dvc.yaml``'s text with each stage's ``src/imitation_gap`` deps replaced by ``deps[stage]`` (at the
    place of the first one, or first in the list) and the header line set; the rest as it was."""
    lines = text.split("\n")
    if HEADER_RE.match(lines[0]):
        lines = lines[1:]
    out, stage, in_deps, placed = [], None, False, False

    def code(stage_name: str, indent: str) -> list[str]:
        return [f"{indent}- {d}" for d in deps.get(stage_name, [])]

    for line in lines:
        m = re.match(r"^  ([\w@.-]+):", line)
        if m and not line.startswith("   "):
            stage, in_deps, placed = m.group(1), False, False
        elif re.match(r"^\S", line):
            stage, in_deps = None, False
        if stage and re.match(r"^    deps:", line):
            in_deps, placed = True, False
            out.append(line)
            continue
        if in_deps:
            item = re.match(r"^(\s{6})- (\S+)", line)
            if item and item.group(2).startswith(f"src/{PKG}"):
                if not placed:
                    out += code(stage, item.group(1))
                    placed = True
                continue
            if item and not placed:
                out += code(stage, item.group(1))
                placed = True
            if not item and not line.strip().startswith("#") and line.strip():
                in_deps = False
        out.append(line)
    return "\n".join([HEADER.format(world=world)] + out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="write the computed deps into dvc.yaml")
    ap.add_argument("--world", help="the world to compute them for (default: `world` in --params)")
    ap.add_argument("--dvc-yaml", default="dvc.yaml")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    dvc_yaml, src = Path(args.dvc_yaml), Path(args.dvc_yaml).parent / SRC
    worlds = sorted(p.name for p in (src / PKG / "worlds").iterdir() if (p / "__init__.py").exists())
    world = args.world or (yaml.safe_load(Path(args.params).read_text()) or {}).get("world", "embedded")
    if world not in worlds:
        print(f"deps: world {world!r} has no package under src/{PKG}/worlds/; the worlds: {worlds}", file=sys.stderr)
        return 2
    try:
        entries = stage_entries(dvc_yaml)
        check_imports(list(entries.values()), world, src)
        diff = differences(dvc_yaml, world, src)
        if args.write:
            if diff:
                dvc_yaml.write_text(rewrite(dvc_yaml.read_text(), computed(dvc_yaml, world, src), world))
            print(f"deps: {dvc_yaml}: {len(entries)} stages' code deps are their import closures in world {world}"
                  f" ({len(diff)} lines changed)")
            return 0
    except DepsError as e:
        print(f"deps: {e}", file=sys.stderr)
        return 2
    if diff:
        print("\n".join(diff) + f"\ndeps: {dvc_yaml} differs from the import graph; run "
              f"`python -m imitation_gap.tools.deps --write{'' if args.world is None else ' --world ' + world}`",
              file=sys.stderr)
        return 1
    print(f"deps: {dvc_yaml}: every stage's code deps are its import closure in world {world}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
