"""The package's floors (README "Layout"): no module imports from a floor above its own, not
even inside a function, jobs/ holds only job entry points, and only jobs/ and the command
line spell a binding as a command-line flag ("--gin.")."""

import ast
import os
import sys

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "slm_jax")
# Ground up; a module may import its own floor and the floors below it.
FLOORS = [
    ("model", "math_eval", "analysis", "hardware", "console", "cli_errors", "disk"),
    ("slm", "data", "corpora"),
    ("parallel",),
    ("trainer",),
    ("hf", "evals"),
    ("jobs",),
    ("main", "bench", "convert", "evaluate"),
]


def floor_of(module: str) -> int:
    top = module.split(".")[1]
    for i, names in enumerate(FLOORS):
        if top in names:
            return i
    raise AssertionError(f"slm_jax.{top} has no floor in tests/test_layers.py")


def package_modules():
    for dirpath, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3]
                yield path, rel.replace(os.sep, ".").removesuffix(".__init__")


def imported_modules(path: str):
    """(line, slm_jax module) of every import in the file, at any depth."""
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from slm_jax import model` names the subpackage in the alias.
            names = ([f"slm_jax.{alias.name}" for alias in node.names]
                     if node.module == "slm_jax" else [node.module])
        else:
            continue
        yield from ((node.lineno, n) for n in names if n.startswith("slm_jax."))


def upward_imports() -> list[str]:
    found = []
    for path, module in package_modules():
        if module == "slm_jax":
            continue
        own = floor_of(module)
        for line, imported in imported_modules(path):
            if floor_of(imported) > own:
                found.append(f"{module}:{line} imports {imported} (floor {floor_of(imported)} "
                             f"> {own})")
    return found


def test_no_module_imports_from_a_higher_floor():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import_inside_a_function(tmp_path, monkeypatch):
    bad = tmp_path / "slm_jax" / "model"
    bad.mkdir(parents=True)
    (bad / "x.py").write_text("def f():\n    from slm_jax.jobs import train\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", str(tmp_path / "slm_jax"))
    assert upward_imports() == ["slm_jax.model.x:2 imports slm_jax.jobs (floor 5 > 0)"]


JOBS_FLOOR = FLOORS.index(("jobs",))
FLAG = "--gin."


def flags_below_jobs() -> list[str]:
    """module:line of every "--gin." below jobs/ (code, strings, comments alike): the layers
    below name a binding as gin does, and the command line (cli_errors) makes it a flag."""
    found = []
    for path, module in package_modules():
        if module == "slm_jax" or floor_of(module) >= JOBS_FLOOR:
            continue
        with open(path, encoding="utf-8") as f:
            found += [f"{module}:{i}" for i, line in enumerate(f, 1) if FLAG in line]
    return found


def test_no_module_below_jobs_spells_a_gin_flag():
    assert flags_below_jobs() == []


def test_the_check_sees_a_gin_flag_below_jobs(tmp_path, monkeypatch):
    for floor, text in [("trainer", "x = 1\nraise ValueError('set " + FLAG + "train.x')\n"),
                        ("jobs", "FIX = 'set " + FLAG + "train.x'\n")]:
        (tmp_path / "slm_jax" / floor).mkdir(parents=True)
        (tmp_path / "slm_jax" / floor / "x.py").write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", str(tmp_path / "slm_jax"))
    assert flags_below_jobs() == ["slm_jax.trainer.x:2"]


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(PACKAGE, "jobs"))))
def test_jobs_holds_only_entry_points(name):
    """Every module of jobs/ registers a job in registry.JOBS (or is the registry)."""
    if not name.endswith(".py") or name in ("__init__.py", "registry.py"):
        return
    from slm_jax.jobs import registry
    modules = {job.__module__ for job in registry.JOBS.values()}
    assert f"slm_jax.jobs.{name[:-3]}" in modules, f"jobs/{name} is not a job entry point"
