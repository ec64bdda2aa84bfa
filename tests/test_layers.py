"""The modules' layers: each imports only from its own layer or those below it, and nothing outside
tools/ imports from tools/."""
import ast
from pathlib import Path

from conftest import REPO

LAYERS = [
    ["errors", "geometry", "images"],                                      # conventions, the one reader
    ["outputs", "coco_files", "codec", "checkpoints", "run_utils"],        # files, formats, run plumbing
    ["crop_cache", "dogflw", "dataset", "face_boxes", "model", "detector"],  # data and models
    ["inference", "training", "visualize", "evaluate"],                    # using them
    ["tracking", "video_tables", "filtering", "video"],                    # video analysis
    ["train_simple"],                                                      # the landmark trainer
]
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}


def project_imports(path: Path) -> set[str]:
    """The project modules (top-level files and tools) that a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
        found |= {n.split(".")[0] if not n.startswith("tools") else n for n in names}
    return {n for n in found if n in LAYER or n.startswith("tools")}


def test_every_module_has_a_layer():
    modules = {p.stem for p in REPO.glob("*.py")}
    assert modules == set(LAYER), f"place these in LAYERS: {sorted(modules ^ set(LAYER))}"


def test_no_module_imports_from_a_higher_layer_or_from_tools():
    upward = [f"{p.name} imports {name}" for p in REPO.glob("*.py") for name in project_imports(p)
              if name.startswith("tools") or LAYER[name] > LAYER[p.stem]]
    assert not upward, upward
