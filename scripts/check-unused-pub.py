#!/usr/bin/env python3
"""Fails when a library crate exports an item that nothing outside it names.

Issue 16.4 asks for no unused public item in the library crates (queue,
dkim, bounces). Two halves:
  1. a `pub` item the crate does not export: the compiler finds it. Each
     library sets the `unreachable_pub` lint in its lib.rs, so such an
     item is written `pub(crate)`, and rustc then reports it if it is dead.
  2. what a crate exports (the `pub use` names of lib.rs and the top-level
     items of a `pub mod`): this script. An exported name must be named
     outside the crate, by another member crate or by the crate's own tests,
     benches, examples or fuzz targets: through a `sendengine_x::` path or use
     list, or (items of a `pub mod`, reached as `module::item`) by name.
A type exported only because a public function takes or returns it counts
as used when a `pub fn` signature of the crate names it. Methods and fields
are not checked: their names are too common to tell by text. Comments do
not count as a use. Run by scripts/test.sh; prints each unused export and
exits 1.
"""

import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIBRARIES = ("queue", "dkim", "bounces")
ITEM = re.compile(r"^pub (?:const |async |unsafe )*(?:fn|struct|enum|const|static|type|trait)\s+(\w+)", re.M)
# What follows the name of a `pub fn` up to its body: parameters and result.
PUB_FN_SIGNATURE = re.compile(r"\bpub fn\s+\w+([^{;]*)", re.S)


def without_comments(text: str) -> str:
    return re.sub(r"//.*", "", text)


def rust_files(folder: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in folder.rglob("*.rs") if "target" not in p.relative_to(ROOT).parts]


def outside_text(library: str, members: list[str]) -> str:
    """Every Rust source that uses `library` from outside it."""
    folders = [ROOT / m for m in members if m != library]
    own = ROOT / library
    folders += [own / "tests", own / "benches", own / "examples", own / "fuzz"]
    return "\n".join(without_comments(p.read_text()) for f in folders for p in rust_files(f))


def crate_path_names(crate: str, text: str) -> set[str]:
    """Identifiers after `crate::`: one path, or a whole (nested) use list."""
    names = set()
    for match in re.finditer(rf"\b{crate}::", text):
        rest = text[match.end():]
        if rest.startswith("{"):
            depth, end = 0, 0
            for end, char in enumerate(rest):
                depth += {"{": 1, "}": -1}.get(char, 0)
                if depth == 0:
                    break
            names |= set(re.findall(r"\w+", rest[: end + 1]))
        else:
            names |= set(re.findall(r"\w+", re.match(r"[\w:]*", rest).group()))
    return names


def exports(src: pathlib.Path) -> tuple[set[str], set[str]]:
    """(names re-exported by `pub use`, top-level items of `pub mod`s)."""
    lib = without_comments((src / "lib.rs").read_text())
    used = set()
    for body in re.findall(r"^pub use [^;]*;", lib, re.M):
        path = body.removeprefix("pub use ").rstrip(";")
        if "{" in path:
            path = path[path.index("{") + 1 : path.rindex("}")]
        for part in path.split(","):
            name = part.split(" as ")[-1].split("::")[-1].strip()
            if name:
                used.add(name)
    module_items = set(ITEM.findall(lib))
    for module in re.findall(r"^pub mod (\w+);", lib, re.M):
        file = src / f"{module}.rs"
        file = file if file.exists() else src / module / "mod.rs"
        module_items |= set(ITEM.findall(without_comments(file.read_text())))
    return used, module_items


def main() -> int:
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    unused = []
    for library in LIBRARIES:
        src = ROOT / library / "src"
        crate = "sendengine_" + library
        text = outside_text(library, members)
        by_path = crate_path_names(crate, text)
        signatures = " ".join(
            PUB_FN_SIGNATURE.findall("\n".join(without_comments(p.read_text()) for p in rust_files(src)))
        )
        reexported, module_items = exports(src)
        for name in sorted(reexported | module_items):
            named = name in by_path or (name in module_items and re.search(rf"\b{name}\b", text))
            in_signature = re.search(rf"\b{name}\b", signatures)
            if not named and not in_signature:
                unused.append(f"{library}: `{name}` is exported but nothing outside the crate names it; make it pub(crate)")
    for line in unused:
        print(line)
    return 1 if unused else 0


if __name__ == "__main__":
    sys.exit(main())
