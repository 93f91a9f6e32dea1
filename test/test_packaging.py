"""The package as users meet it: package.xml, installed data files, console scripts, params file, launch file."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import yaml
from conftest import child_env

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.prefix) / "bin"


def test_package_xml_is_format_3_ament_python():
    root = ElementTree.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "ser_node"
    assert root.find("export/build_type").text == "ament_python"
    depends = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "audio_common_msgs", "hri_msgs", "vision_msgs", "diagnostic_msgs", "std_msgs", "launch",
            "launch_ros"} <= depends
    assert root.findtext("license")
    assert (ROOT / "resource" / "ser_node").exists()


@pytest.mark.parametrize("script", ["ser_node", "ser_train", "ser_export", "ser_demo", "ser_trainer", "ser_empathy",
                                    "ser_bag", "ser_train_voice"])
def test_console_scripts_have_help(script):
    path = BIN / script
    if not path.exists():
        pytest.skip(f"{path} not installed: run scripts/setup.sh")
    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, env=child_env(), timeout=60)
    assert result.returncode == 0 and "usage" in result.stdout.lower(), result.stderr


def test_installed_share_files():
    share = Path(sys.prefix) / "share" / "ser_node"
    if not share.exists():
        pytest.skip(f"{share} missing: ser_node is not pip-installed in this environment (scripts/setup.sh does it)")
    assert (share / "package.xml").exists() and (share / "config" / "ser_node.yaml").exists()
    assert (share / "launch" / "ser_node.launch.py").exists()
    assert (Path(sys.prefix) / "share" / "ament_index" / "resource_index" / "packages" / "ser_node").exists()


def test_params_file_documents_every_parameter():
    pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")
    from ros_harness import Harness

    documented = yaml.safe_load((ROOT / "config" / "ser_node.yaml").read_text())["/**"]["ros__parameters"]
    harness = Harness(autostart=False)
    try:
        declared = {name for name in harness.node._parameters
                    if name not in ("use_sim_time", "start_type_description_service")}  # rclpy's own
        assert set(documented) == declared
        for name, value in documented.items():
            assert type(harness.node.get_parameter(name).value) is type(value), name  # defaults agree in type
            assert harness.node.get_parameter(name).value == value, name
    finally:
        harness.close()


def test_launch_file(tmp_path):
    launch_ros = pytest.importorskip(
        "launch_ros", reason="launch_ros is not on PyPI; this runs in a real ROS 2 workspace (colcon test)")
    from launch import LaunchDescription  # noqa: F401

    spec = __import__("importlib.util").util.spec_from_file_location("ser_launch", ROOT / "launch" / "ser_node.launch.py")
    module = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {a.name for a in description.entities if hasattr(a, "name") and isinstance(a.name, str)}
    assert {"params_file", "namespace", "audio_topic", "model_path", "device", "autostart"} <= names
    assert launch_ros


def test_console_script_with_params_file_in_a_namespace(exported_models, real_waveforms, tmp_path):
    pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")
    script = BIN / "ser_node"
    if not script.exists():
        pytest.skip(f"{script} not installed: run scripts/setup.sh")
    from ros_harness import expressions_from_process, speech_stream

    params = tmp_path / "params.yaml"
    values = yaml.safe_load((ROOT / "config" / "ser_node.yaml").read_text())
    values["/**"]["ros__parameters"].update(model_path=str(exported_models["fp32"]), reliability="reliable",
                                            vad_backend="webrtc")
    params.write_text(yaml.safe_dump(values))
    received, sent, output = expressions_from_process(
        [str(script), "--ros-args", "--params-file", str(params), "-r", "__ns:=/robot", "-r", "audio:=/robot/mic"],
        child_env(), "/robot/mic", "/robot/ser_node/expression", real_waveforms[:2])
    assert len(received) == sent, output[-2000:]
    _stream, bounds = speech_stream(real_waveforms[:2])
    assert abs((received[0].header.stamp.sec + received[0].header.stamp.nanosec * 1e-9) - 1000.0 - bounds[0][0]) < 0.6
    assert "variant: typed" in output and "active: listening on /robot/mic" in output, output


def test_bag_tool_definitions_match_the_interface_package():
    """The typed audio definitions used to read/write bags are the fields of interfaces/audio_common_msgs."""
    from ser_node.audio.wire import TYPED_AUDIO_MSG_DEFINITIONS

    for name, definition in TYPED_AUDIO_MSG_DEFINITIONS.items():
        msg_file = ROOT / "interfaces" / "audio_common_msgs" / "msg" / f"{name.rsplit('/', 1)[1]}.msg"
        fields = []
        for line in msg_file.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and "=" not in line:  # constants are not fields
                kind, field_name = line.split()
                fields.append(f"{kind.replace('audio_common_msgs/', '')} {field_name}")
        expected = [line.replace("audio_common_msgs/", "") for line in definition.strip().splitlines()]
        assert fields == expected, name


def test_console_script_failures_are_one_actionable_line(exported_models, tmp_path):
    """A broken start ends the process with a status a supervisor sees and one line that says why."""
    pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")
    node = [sys.executable, "-m", "ser_node.ros.node", "--ros-args"]
    missing = subprocess.run(node + ["-p", f"model_path:={tmp_path / 'missing.onnx'}"], env=child_env(),
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "missing.onnx: model file not found" in missing.stderr + missing.stdout
    assert "--wait-for-model" in missing.stderr + missing.stdout
    out_of_range = subprocess.run(node + ["-p", "min_confidence:=5.0"], env=child_env(), capture_output=True,
                                  text=True, timeout=60)
    assert out_of_range.returncode == 2 and "Traceback" not in out_of_range.stderr
    assert out_of_range.stderr.strip().count("\n") == 0 and "min_confidence" in out_of_range.stderr
    assert "0.0" in out_of_range.stderr and "5.0" in out_of_range.stderr
    help_text = subprocess.run([sys.executable, "-m", "ser_node.ros.node", "--help"], capture_output=True, text=True)
    assert "--wait-for-model" in help_text.stdout
    export = subprocess.run([sys.executable, "-m", "ser_node.cli.export", str(tmp_path), str(tmp_path / "m.onnx")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert export.returncode == 2 and "is not a training run" in export.stderr and "Errno" not in export.stderr


def test_colcon_build_installs_a_package_that_runs(real_waveforms, tmp_path):
    """The README's workspace path: colcon builds ser_node against the venv's ROS wheels and interface packages;
    the installed layout is complete, and the installed ser_node with the installed params file publishes."""
    pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")
    colcon = BIN / "colcon"
    if not colcon.exists():
        pytest.skip(f"{colcon} not installed: run scripts/setup.sh (requirements/test.txt)")
    import shutil

    from ros_harness import expressions_from_process

    source = tmp_path / "ws" / "src" / "ser_node"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", "build", ".git", "bench", "runs", "results",
                                                                 "__pycache__", "*.egg-info", "interfaces"))
    env = {**child_env(), "AMENT_PREFIX_PATH": sys.prefix, "CMAKE_PREFIX_PATH": sys.prefix,
           "PATH": f"{BIN}:{child_env().get('PATH', '')}"}
    env.pop("PYTHONPATH", None)  # the installed package must run from the install space, not from this checkout
    built = subprocess.run([str(colcon), "build", "--packages-select", "ser_node"], cwd=tmp_path / "ws", env=env,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    prefix = tmp_path / "ws" / "install" / "ser_node"
    share = prefix / "share" / "ser_node"
    for path in (prefix / "share" / "ament_index" / "resource_index" / "packages" / "ser_node",
                 share / "package.xml", share / "launch" / "ser_node.launch.py", share / "config" / "ser_node.yaml",
                 share / "models" / "ser_default.onnx", share / "models" / "MODEL_CARD.md",
                 share / "demo" / "demo_es.wav",
                 share / "launch" / "empathy_demo.launch.py",
                 *(prefix / "lib" / "ser_node" / name for name in ("ser_node", "ser_train", "ser_export", "ser_bag",
                                                                   "ser_demo", "ser_trainer", "ser_train_voice",
                                                                   "ser_empathy"))):
        assert path.exists(), path
    command = (f"source {tmp_path / 'ws' / 'install' / 'setup.bash'} && exec "
               f"{prefix / 'lib' / 'ser_node' / 'ser_node'} --ros-args --params-file {share / 'config' / 'ser_node.yaml'}"
               " -p vad_backend:=webrtc -p reliability:=reliable -r audio:=/colcon_mic")
    received, sent, output = expressions_from_process(["bash", "-c", command], env, "/colcon_mic",
                                                      "/ser_node/expression", real_waveforms[:2])
    assert len(received) == sent, output[-2000:]
    assert str(share / "models" / "ser_default.onnx") in output, output[-2000:]  # the installed default model


def test_the_demo_runs_the_node_and_the_example_behaviour():
    """ser_demo (what scripts/demo.sh runs): the shipped model on the bundled audio, every sentence classified, and
    the example behaviour (ser_empathy on the voices' moods) responding to the demo's lasting negative mood."""
    pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")
    result = subprocess.run([sys.executable, "-m", "ser_node.ros.demo", "--speed", "2"], capture_output=True,
                            text=True, timeout=120, env=child_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done: 4 utterance(s) classified" in result.stdout, result.stdout[-2000:]
    assert 'robot (ser_empathy): "' in result.stdout, result.stdout[-2000:]
    quiet = subprocess.run([sys.executable, "-m", "ser_node.ros.demo", "--speed", "4", "--no-behaviour"],
                           capture_output=True, text=True, timeout=120, env=child_env())
    assert quiet.returncode == 0 and "ser_empathy" not in quiet.stdout
