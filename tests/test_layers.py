"""The layers, read from the folders: each unit (a top-level file or a package) imports only from
itself and the units below it, and nothing imports from tools/ but tools/ and the tests."""
import ast
from pathlib import Path

from conftest import REPO

# lowest first: the shared basics, the landmark data and model, the shared training skeleton, the
# detector, image -> faces -> landmarks, scoring, the video and photo analysis, the trainer, commands
UNITS = ["basics", "dataset", "model", "training", "detector", "inference", "evaluate", "analysis",
         "train_simple", "tools"]
LEVEL = {unit: level for level, unit in enumerate(UNITS)}


def unit_of(path: Path) -> str:
    """The unit a file belongs to: its package's folder, or a top-level file's name."""
    relative = path.relative_to(REPO)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def code_files() -> list[Path]:
    """Every Python file of the project but the tests and the measurement scripts."""
    return sorted(p for p in REPO.rglob("*.py") if unit_of(p) not in ("tests", "docs", "work_dirs", ".venv"))


def imported_units(path: Path) -> set[str]:
    """The project units a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
        found |= {name.split(".")[0] for name in names}
    return {"tools" if name == "_repo" else name for name in found} & set(UNITS)


def test_every_top_level_file_and_package_is_a_unit():
    units = {unit_of(p) for p in code_files()}
    assert units == set(UNITS), f"place these in UNITS: {sorted(units ^ set(UNITS))}"


def test_the_top_level_shows_the_product():
    assert len(list(REPO.glob("*.py"))) <= 8


def test_no_unit_imports_from_a_higher_one():
    upward = [f"{p.relative_to(REPO)} imports {unit}" for p in code_files() for unit in imported_units(p)
              if LEVEL[unit] > LEVEL[unit_of(p)]]
    assert not upward, upward
