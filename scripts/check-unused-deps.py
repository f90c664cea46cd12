#!/usr/bin/env python3
"""Fails when the workspace declares a dependency nothing uses.

Two checks, the class of error issue 16.4 found (smtp-proto and mail-builder
sat in [workspace.dependencies] with no user):
  1. every [workspace.dependencies] entry is taken by some member crate;
  2. every dependency of a member is named in that crate's Rust sources
     (`foo-bar` as `foo_bar`), so a crate does not build what it never calls.
Run by scripts/test.sh; prints each unused dependency and exits 1.
"""

import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def member_sources(crate: pathlib.Path) -> str:
    """All Rust text of a crate: src, tests, benches, examples, build.rs."""
    texts = []
    for folder in ("src", "tests", "benches", "examples"):
        texts += [p.read_text() for p in (crate / folder).rglob("*.rs")]
    build = crate / "build.rs"
    if build.exists():
        texts.append(build.read_text())
    return "\n".join(texts)


def main() -> int:
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())
    declared = set(workspace["workspace"].get("dependencies", {}))
    taken = set()
    unused = []
    for member in workspace["workspace"]["members"]:
        crate = ROOT / member
        manifest = tomllib.loads((crate / "Cargo.toml").read_text())
        sources = member_sources(crate)
        for section in ("dependencies", "dev-dependencies", "build-dependencies"):
            for name, spec in manifest.get(section, {}).items():
                if isinstance(spec, dict) and spec.get("workspace"):
                    taken.add(name)
                # The key is the name the code uses, even with `package = ...`.
                rust_name = name.replace("-", "_")
                if not re.search(rf"\b{re.escape(rust_name)}\b", sources):
                    unused.append(f"{member}/Cargo.toml [{section}] {name}: not used in {member}'s sources")
    for name in sorted(declared - taken):
        unused.append(f"Cargo.toml [workspace.dependencies] {name}: no member crate uses it")
    for line in unused:
        print(f"unused dependency: {line}", file=sys.stderr)
    return 1 if unused else 0


if __name__ == "__main__":
    sys.exit(main())
