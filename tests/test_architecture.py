"""The dependency rule and the size of a module, read from the source (docs/architecture.md).

skiff_cli -> {orchestration, serving, ml, skiff}; orchestration -> {ml, skiff}; serving -> {ml,
skiff}; ml -> nothing of ours; skiff -> nothing of ours. Function-level imports count too: a
lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = {"skiff", "skiff_cli", "orchestration", "serving", "ml", "bench", "tests"}
ALLOWED = {
    "skiff": {"skiff"},
    "ml": {"ml"},
    "serving": {"serving", "ml", "skiff"},
    "orchestration": {"orchestration", "ml", "skiff"},
    "skiff_cli": {"skiff_cli", "orchestration", "serving", "ml", "skiff"},
}
# ml/ stays free of Dagster and of the warehouse; the server reads published artifacts only.
FORBIDDEN_THIRD_PARTY = {
    "ml": {"dagster", "dagster_dbt", "dagster_duckdb", "dagster_snowflake", "dbt", "duckdb"},
    "serving": {"dagster", "dagster_dbt", "dagster_duckdb", "dagster_snowflake", "dbt", "duckdb"},
    "skiff": {"dagster_dbt", "dagster_duckdb", "dagster_snowflake", "dbt", "duckdb"},
}
# The one exception to Dagster's public API, pinned to dagster==1.13.27 (STACK.md): Dagster has
# no public call that executes a run of a code location from Python. These are what `dagster
# job launch` and the web server use to give a run its origin; without them a run executed here
# is an orphan the UI lists under no job and cannot re-execute. tests/test_e2e_ui.py proves it.
# (The other private dependency is not an import: orchestration/dbt/project.py overrides two
# private members of dagster-dbt's DbtCliResource, pinned 0.29.27; tests/test_dbt_project.py
# fails if dbt --version runs again, i.e. if an upgrade renamed them.)
PRIVATE_DAGSTER = {
    "orchestration/runs.py": {
        "dagster._core.execution.api",
        "dagster._core.remote_origin",
        "dagster._core.workspace.load",
    }
}
MAX_LINES = 400
SIZE_LIMITED = ("skiff", "skiff_cli", "orchestration", "serving")


def imports(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in a file, relative imports resolved."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append((node.lineno, ".".join([*base, node.module or ""]).rstrip(".")))
            else:
                found.append((node.lineno, node.module or ""))
    return found


def modules(package: str, root: Path = REPO) -> list[Path]:
    return sorted((root / package).rglob("*.py"))


def violations(package: str, root: Path = REPO) -> list[str]:
    broken = []
    for path in modules(package, root):
        for line, name in imports(path, root):
            top = name.split(".")[0]
            if (top in OURS and top not in ALLOWED[package]) or top in FORBIDDEN_THIRD_PARTY.get(
                package, ()
            ):
                broken.append(f"{path.relative_to(root)}:{line} imports {name}")
    return broken


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_the_dependency_rule_allows(package: str):
    assert modules(package), f"no modules found under {package}/"
    broken = violations(package)
    assert not broken, "\n".join(broken)


def test_only_public_dagster_api():
    private = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for package in ALLOWED
        for path in modules(package)
        for line, name in imports(path)
        if (name.startswith("dagster._") or name.startswith("dagster_dbt._"))
        and name not in PRIVATE_DAGSTER.get(str(path.relative_to(REPO)), ())
    ]
    assert not private, "\n".join(private)


def test_no_module_over_the_size_limit():
    long = [
        f"{path.relative_to(REPO)}: {n} lines"
        for package in SIZE_LIMITED
        for path in modules(package)
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, f"split these (over {MAX_LINES} lines):\n" + "\n".join(long)


def test_the_checker_sees_a_violation(tmp_path: Path):
    """A breach is caught: a lazy import inside a function, a relative import, a warehouse."""
    (tmp_path / "skiff").mkdir()
    (tmp_path / "skiff" / "probe.py").write_text(
        "def f():\n    from orchestration.definitions import defs\n    return defs\n"
    )
    (tmp_path / "ml" / "sub").mkdir(parents=True)
    (tmp_path / "ml" / "sub" / "probe.py").write_text("from ..registry import x\nimport duckdb\n")
    assert violations("skiff", tmp_path) == ["skiff/probe.py:2 imports orchestration.definitions"]
    assert violations("ml", tmp_path) == ["ml/sub/probe.py:2 imports duckdb"]
