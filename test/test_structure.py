"""The package's layers, enforced: what each subpackage may import (README, Layout).

Top down: cli/ > ros/ > bags/ > train/ > inference/, audio/ > labels, settings, files. A module imports only from
its own layer and the layers below; inference/ and audio/ do not import each other, and neither imports a
training-only package (the robot runs them with numpy and ONNX Runtime only). Nothing outside ros/ imports rclpy or
ROS messages, except the console scripts in cli/ inside a function (their ROS commands start only when asked).
Imports are read from the source (every import statement, also those inside functions), and the modules are also
imported for real where rclpy and the training packages cannot be imported.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, child_env

PACKAGE = ROOT / "ser_node"
BASE = {"labels", "settings", "files", "data"}
ALLOWED = {  # layer -> the layers it may import from (besides the base modules)
    "audio": {"audio"},
    "inference": {"inference"},
    "train": {"audio", "inference", "train"},
    "bags": {"audio", "inference", "train", "bags"},
    "ros": {"audio", "inference", "train", "bags", "ros"},
    "cli": {"audio", "inference", "train", "bags", "ros", "cli"},
}
RUNTIME_THIRD_PARTY = {"numpy", "onnxruntime", "soundfile", "soxr", "webrtcvad"}
ROS_PACKAGES = ("rclpy", "audio_common_msgs", "hri_msgs", "vision_msgs", "std_msgs", "std_srvs", "diagnostic_msgs",
                "lifecycle_msgs", "ser_node_interfaces", "builtin_interfaces", "ament_index_python")
# Looked up inside a function and only where installed: the default model's place in an ament install.
OPTIONAL_LAZY = {"ament_index_python"}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module imported, at module level?) for every import statement in the file."""
    module_parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = module_parts[:-1] if path.name != "__init__.py" else module_parts[:-1]
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # `from . import a, b`: each name is a module
                    found += [(f"{target}.{alias.name}", id(node) in top_level) for alias in node.names]
                    continue
            else:
                target = node.module
            found.append((target, id(node) in top_level))
    return found


def _layer(module: str) -> str:
    part = module.split(".")[1] if module.count(".") >= 1 else ""
    return "base" if part in BASE or not part else part


def test_every_import_points_down_the_layers():
    problems = []
    for name, path in _modules().items():
        layer = _layer(name)
        for target, _top in _imports(path):
            if not target.startswith("ser_node."):
                continue
            target_layer = _layer(target)
            if target_layer == "base":
                continue
            if layer == "base" or target_layer not in ALLOWED[layer]:
                problems.append(f"{name} ({layer}) imports {target} ({target_layer})")
    assert not problems, "\n".join(problems)


def test_the_robot_layers_import_only_runtime_packages():
    stdlib = set(sys.stdlib_module_names)
    problems = []
    for name, path in _modules().items():
        if _layer(name) not in ("audio", "inference", "base"):
            continue
        for target, top_level in _imports(path):
            top = target.split(".")[0]
            if top in OPTIONAL_LAZY and not top_level:
                continue
            if top not in stdlib and top != "ser_node" and top not in RUNTIME_THIRD_PARTY:
                problems.append(f"{name} imports {target}")
    assert not problems, "\n".join(problems)


def test_nothing_outside_ros_imports_ros_except_cli_lazily():
    problems = []
    for name, path in _modules().items():
        layer = _layer(name)
        if layer == "ros":
            continue
        for target, top_level in _imports(path):
            if target.split(".")[0] in OPTIONAL_LAZY and not top_level:
                continue
            if target.split(".")[0] in ROS_PACKAGES or target.startswith("ser_node.ros"):
                if layer != "cli" or top_level:
                    problems.append(f"{name} imports {target}{' at module level' if top_level else ''}")
    assert not problems, "\n".join(problems)


def import_in_child(prelude: str, modules: list[str]) -> None:
    """Imports `modules` in a fresh interpreter after `prelude` (which makes some packages unimportable)."""
    code = f"{prelude}\nimport importlib\nfor name in {modules!r}:\n    importlib.import_module(name)\nprint('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env=child_env())
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-2000:]


def test_the_core_imports_where_rclpy_and_training_packages_cannot():
    """Every module outside ros/ imports with rclpy unavailable; the robot's layers (audio, inference, the base
    modules) and the node also import with every training-only package unavailable."""
    modules = sorted(n for n in _modules() if _layer(n) != "ros" and not n.endswith("__init__"))
    assert "ser_node.audio.wire" in modules and "ser_node.train.experiment" in modules and len(modules) > 30
    import_in_child("import sys; sys.modules['rclpy'] = None  # any import of rclpy now raises ImportError", modules)
    robot = sorted(n for n in _modules() if _layer(n) in ("audio", "inference", "base")) + ["ser_node.ros.node"]
    import_in_child(f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import runtime_parity; "
                    "runtime_parity.block_training_packages()", robot)
    guard = subprocess.run([sys.executable, "-c", "import sys; sys.modules['rclpy'] = None; import ser_node.ros.node"],
                           capture_output=True, text=True, cwd=ROOT, timeout=120, env=child_env())
    assert guard.returncode != 0 and "rclpy" in guard.stderr  # the check itself can fail


def test_the_layer_check_sees_a_broken_rule(tmp_path):
    """The checks can fail: an upward import and a lazy training import are both found in a planted module."""
    planted = PACKAGE / "inference" / "_planted_for_test.py"
    planted.write_text("from ..train import corpora\n\ndef f():\n    import torch\n")
    try:
        try:
            test_every_import_points_down_the_layers()
            upward_found = False
        except AssertionError as error:
            upward_found = "_planted_for_test (inference) imports ser_node.train" in str(error)
        try:
            test_the_robot_layers_import_only_runtime_packages()
            torch_found = False
        except AssertionError as error:
            torch_found = "imports torch" in str(error)
    finally:
        planted.unlink()
    assert upward_found and torch_found
