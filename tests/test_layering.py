"""The house reads from the ground up (ARCHITECTURE.md): every import of one sslnb module by another,
including imports inside functions, points to the same floor or one below, and there is no circle."""

import ast
from pathlib import Path

import pytest

SSLNB = Path(__file__).resolve().parent.parent / "sslnb"

FLOORS = {
    1: ["config", "data", "augment", "norm", "losses", "memory_bank", "tsne", "published", "site_ext"],
    2: ["models", "optim", "dist", "rundir", "grouped"],
    3: ["methods"],  # and every module under sslnb/methods/ (a method is one file)
    4: ["evaluate"],
    5: ["train", "grid"],
    6: ["runs"],
    7: ["experiments", "book", "plots", "bundle"],
    8: ["schedule", "widgets"],
}
FLOOR = {f"sslnb.{name}": floor for floor, names in FLOORS.items() for name in names}
FLOOR["sslnb"] = max(FLOORS) + 1  # the package itself imports sslnb.methods, so that every method registers


def floor_of(module: str) -> int:
    """A module's floor; any module under sslnb/methods/ is on the methods' floor."""
    if module.startswith("sslnb.methods."):
        return FLOOR["sslnb.methods"]
    return FLOOR[module]


def modules(root: Path = SSLNB) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every sslnb import in the file, wherever it is."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                if f"{module}.{alias.name}" in known:  # from . import dist
                    found.append((f"{module}.{alias.name}", "", node.lineno))
                elif module in known:
                    found.append((module, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name in known]
    return [(m, n, line) for m, n, line in found if m != name]


def graph(root: Path = SSLNB) -> dict[str, list[tuple[str, str, int]]]:
    mods = modules(root)
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, list]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w, _, _ in edges.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_floor():
    unplaced = {m for m in modules() if not m.startswith("sslnb.methods.")} - set(FLOOR)
    assert not unplaced, f"add {sorted(unplaced)} to FLOORS here and to ARCHITECTURE.md"
    assert set(FLOOR) <= set(modules()), "FLOORS names a module that is gone"


def test_no_import_points_up_and_there_is_no_circle():
    edges = graph()
    upward = [f"{a} (floor {floor_of(a)}) imports {b} (floor {floor_of(b)}) at line {line}"
              for a, targets in edges.items() for b, _, line in targets if floor_of(b) > floor_of(a)]
    assert not upward, "\n".join(upward)
    assert not cycles(edges)


def test_no_module_uses_another_modules_private_names():
    private = [f"{a} imports {b}.{n} at line {line}" for a, targets in graph().items()
               for b, n, line in targets if n.startswith("_") and n != "__version__"]
    assert not private, "\n".join(private)


def test_the_checks_catch_an_upward_import_a_hidden_one_and_a_circle(tmp_path):
    pkg = tmp_path / "sslnb"
    pkg.mkdir()
    (pkg / "config.py").write_text("def f():\n    from .train import g\n")  # hidden inside a function
    (pkg / "train.py").write_text("from .config import f\nfrom .rundir import _secret\n")
    (pkg / "rundir.py").write_text("")
    edges = graph(pkg)
    assert ("sslnb.train", "g", 2) in edges["sslnb.config"]
    assert cycles(edges) == [["sslnb.config", "sslnb.train"]]
    assert any(n.startswith("_") for _, n, _ in edges["sslnb.train"])


@pytest.mark.parametrize("floor", sorted(FLOORS))
def test_architecture_md_lists_every_floor_as_the_test_does(floor):
    text = (SSLNB.parent / "ARCHITECTURE.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {floor} |"))
    named = {part.strip().strip("`") for part in row.split("|")[2].split(",")}
    assert named == set(FLOORS[floor]), row
