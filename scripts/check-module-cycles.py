#!/usr/bin/env python3
"""Fails when the top-level modules of engine/src import each other in a cycle.

Issue 16.1: ten modules of engine/src (config, deliver, engine, events,
limits, metrics, route, smtp, suppress, tenancy) imported each other in one
cycle, so none could be tested or split out alone. Dependencies must point
one way; `values` is the leaf of shared plain types.

A folder or a .rs file directly under engine/src is one module (lib.rs and
bin/ are left out: they only wire the modules). Module `a` depends on `b`
when a file of `a` names `crate::b` in code (comments are ignored), either
as a path or inside a `use crate::{...}` group. Paths through `super::` are
not followed: within engine/src they stay inside their top-level module
(reaching another one takes as many `super` as the file is deep; write
`crate::` for that).

Usage: check-module-cycles.py [SRC_DIR] [-v]
  SRC_DIR defaults to engine/src of this repository; -v prints every edge.
Prints each cycle with one file:line per edge in it and exits 1; exits 0
when the graph has no cycle. Run by scripts/test.sh.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
LEFT_OUT = {"lib.rs", "main.rs", "bin"}
CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
CRATE_GROUP = re.compile(r"\bcrate::\{")


def modules(src: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """Top-level module name -> its Rust files."""
    found = {}
    for entry in sorted(src.iterdir()):
        if entry.name in LEFT_OUT:
            continue
        if entry.is_dir():
            found.setdefault(entry.name, []).extend(sorted(entry.rglob("*.rs")))
        elif entry.suffix == ".rs":
            found.setdefault(entry.stem, []).append(entry)
    return found


def without_comments(line: str) -> str:
    """The line up to a `//` comment (doc comments included)."""
    return line.split("//", 1)[0]


def group_heads(text: str, start: int) -> list[str]:
    """First path segments of a `crate::{...}` group opening at `start`
    (just after its `{`): `{a, b::c, d::{e, f}}` gives a, b, d."""
    heads, depth, item = [], 0, ""
    for ch in text[start:]:
        if ch == "{":
            depth += 1
        elif ch == "}":
            if depth == 0:
                break
            depth -= 1
        elif ch == "," and depth == 0:
            heads.append(item)
            item = ""
            continue
        if depth == 0:
            item += ch
    heads.append(item)
    names = (re.match(r"\s*([a-z_][a-z0-9_]*)", h) for h in heads)
    return [m.group(1) for m in names if m]


def references(path: pathlib.Path) -> list[tuple[str, int]]:
    """(module named after `crate::`, line number) for every reference."""
    lines = [without_comments(l) for l in path.read_text().splitlines()]
    code = "\n".join(lines)
    found = []
    for m in CRATE_PATH.finditer(code):
        found.append((m.group(1), code.count("\n", 0, m.start()) + 1))
    for m in CRATE_GROUP.finditer(code):
        line = code.count("\n", 0, m.start()) + 1
        found += [(name, line) for name in group_heads(code, m.end())]
    return found


def dependency_graph(src: pathlib.Path):
    """edges[a] = {b: "file:line" of the first place a names b}."""
    mods = modules(src)
    edges = {name: {} for name in mods}
    for name, files in mods.items():
        for path in files:
            for target, line in references(path):
                if target in mods and target != name:
                    edges[name].setdefault(target, f"{path.relative_to(src)}:{line}")
    return edges


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "-v"]
    src = pathlib.Path(args[0]) if args else ROOT / "engine" / "src"
    edges = dependency_graph(src)
    if "-v" in sys.argv:
        for name in sorted(edges):
            print(name, "->", " ".join(sorted(edges[name])))
    found = cycles(edges)
    for component in found:
        print(f"import cycle among the top-level modules of {src}: {' '.join(component)}")
        for name in component:
            for target, where in sorted(edges[name].items()):
                if target in component:
                    print(f"  {name} -> {target}  ({where})")
    if found:
        print("Make the dependencies point one way (plain shared types go to `values`).")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
