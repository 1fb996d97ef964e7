"""The `longctx` code each DVC stage runs, computed from its imports; checks or rewrites dvc.yaml's deps.

    python tools/stage_deps.py            # list what each stage's deps miss (exit 1 if anything)
    python tools/stage_deps.py --write    # rewrite the `longctx` entries of every stage's deps

A stage runs the script named in its `cmd` (`python stages/x.py ...`). Its code is the transitive
closure of that script's `import` statements over `longctx` modules (imports inside functions
included, since they may run; a string that names a module counts too, for imports by name), plus
the `__init__.py` of every package on the way: importing `longctx.data.packing` executes
`longctx/__init__.py` and `longctx/data/__init__.py` first. A module is covered when a dep is its
file or a folder above it. `--write` lists a sub-package as its folder when the closure holds every
module in it, and each other module as its file; the other deps (the script, models, data) and
every comment stay. tests/test_dvc_deps.py fails when a dep is missing.
"""

import argparse
import ast
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "longctx"


def stage_script(cmd: str) -> str:
    """The script (repo-relative path) that a stage's `cmd` runs."""
    scripts = [tok for tok in shlex.split(cmd) if tok.endswith(".py")]
    if len(scripts) != 1:
        raise ValueError(f"a stage cmd runs one .py script; got {cmd!r}")
    return scripts[0]


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """`longctx.a.b` -> longctx/a/b.py or longctx/a/b/__init__.py; None when there is no such module."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path, name: str | None, root: Path = ROOT) -> set[str]:
    """The `longctx` modules that file `path` (module `name`, None for a script) may import."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                if name is None:
                    raise ValueError(f"{path}: relative import outside a package")
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)  # a module imported by name, e.g. `module_path="longctx.fa4_compat"`
    return {m for m in found if m.split(".")[0] == PACKAGE and module_file(m, root) is not None}


def import_closure(script: Path, root: Path = ROOT) -> set[str]:
    """Every `longctx` file (repo-relative posix path) that running `script` may execute."""
    todo = sorted(imported_modules(script, None, root))
    seen: set[str] = set()
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):  # the module and each package above it
            mod = ".".join(parts[:i])
            if mod not in seen:
                seen.add(mod)
                todo.extend(imported_modules(module_file(mod, root), mod, root) - seen)
    return {module_file(m, root).relative_to(root).as_posix() for m in seen}


def is_covered(path: str, deps: list) -> bool:
    """True when a dep is `path` itself or a folder above it."""
    return any(path == d or path.startswith(d + "/") for d in (str(d).rstrip("/") for d in deps))


def dep_entries(closure: set[str], root: Path = ROOT) -> list[str]:
    """The deps that cover `closure`: a sub-package folder when every module in it is used, else files."""
    entries = set(closure)
    for pkg in sorted({Path(f).parent for f in closure if Path(f).parent != Path(PACKAGE)}):
        modules = {p.relative_to(root).as_posix() for p in (root / pkg).rglob("*.py")}
        if modules <= closure:
            entries = {e for e in entries if not e.startswith(pkg.as_posix() + "/")} | {pkg.as_posix()}
    return sorted(entries)


def stage_closures(stages: dict, root: Path = ROOT) -> dict[str, set[str]]:
    return {name: import_closure(root / stage_script(stage["cmd"]), root) for name, stage in stages.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="rewrite the longctx entries of each stage's deps")
    ap.add_argument("--dvc-yaml", default=str(ROOT / "dvc.yaml"))
    args = ap.parse_args()
    from ruamel.yaml import YAML  # DVC's own YAML library: a round trip keeps comments and layout

    yaml = YAML()
    yaml.indent(mapping=2, sequence=2, offset=0)
    yaml.width = 4096
    yaml.preserve_quotes = True
    path = Path(args.dvc_yaml)
    doc = yaml.load(path)
    missing = {}
    for name, closure in stage_closures(doc["stages"], path.parent).items():
        deps = doc["stages"][name].setdefault("deps", [])
        if args.write:
            script = stage_script(doc["stages"][name]["cmd"])
            others = [d for d in deps if d != script and not is_covered(str(d), [PACKAGE])]
            deps[:] = [script, *dep_entries(closure, path.parent), *others]
        missing[name] = sorted(f for f in closure if not is_covered(f, deps))
        print(f"{name}: {len(closure)} modules" + (f"; not in deps: {missing[name]}" if missing[name] else ""))
    if args.write:
        yaml.dump(doc, path)
        print(f"wrote {path}")
    elif any(missing.values()):
        sys.exit("dvc.yaml misses code deps: run `python tools/stage_deps.py --write`")


if __name__ == "__main__":
    main()
