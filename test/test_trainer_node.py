"""The trainer as a ROS node: trains from parameters, publishes progress, points a running ser_node at the result."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")
pytest.importorskip("torch", reason="training needs the train extra (torch)")

from rclpy.parameter import Parameter  # noqa: E402
from ros_harness import Harness  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from ser_node.ros.trainer_node import make_trainer_class  # noqa: E402


def test_trainer_node_trains_exports_and_reloads_ser_node(exported_models, corpus_dir, tmp_path):
    harness = Harness({"model_path": str(exported_models["fp32"])})
    try:
        overrides = [f"corpus.path={corpus_dir}", "speakers=[s04, s05, s06]", "protocol=all", "epochs=1",
                     "image_size=64", "width=0.125", "variant=ds_fc"]
        trainer = make_trainer_class()(context=harness.context, parameter_overrides=[
            Parameter("overrides", value=overrides), Parameter("out_dir", value=str(tmp_path / "run")),
            Parameter("export_path", value=str(tmp_path / "new.onnx")), Parameter("int8", value=False),
            Parameter("target_node", value="/ser_node")])
        progress = []
        harness.tester.create_subscription(String, "/ser_trainer/progress", lambda m: progress.append(json.loads(m.data)),
                                           50)
        harness.executor.add_node(trainer)
        trainer.start()
        assert trainer.done.wait(timeout=300)
        harness.wait_for("expression", 0, timeout=0.5)
        events = [p["event"] for p in progress]
        assert events[0] == "started" and "epoch" in events and "trained" in events and "exported" in events
        assert trainer.result["event"] == "reloaded", trainer.result
        assert str(harness.node.classifier.path) == str(tmp_path / "new.onnx")
        assert harness.node.classifier.metadata.variant == "ds_fc"
        assert (tmp_path / "run" / "report.json").exists()
        harness.executor.remove_node(trainer)
        trainer.destroy_node()
    finally:
        harness.close()
