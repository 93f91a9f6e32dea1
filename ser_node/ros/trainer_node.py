"""`ser_trainer`: the offline trainer as a ROS 2 node.

Trains from parameters (a ser_train YAML plus overrides), publishes progress as JSON on `~/progress`
(std_msgs/String, one message per epoch and per finished fold), exports the result, and can point a running
ser_node at the new model through its `model_path` parameter (which reloads it, keeping the old model on failure).
"""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any


def make_trainer_class():
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from rclpy.node import Node
    from std_msgs.msg import String

    class TrainerNode(Node):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__("ser_trainer", **kwargs)
            self.declare_parameter("config_file", "")
            self.declare_parameter("overrides", [""])
            self.declare_parameter("out_dir", "runs/ros_trainer")
            self.declare_parameter("resume", False)
            self.declare_parameter("export_path", "")
            self.declare_parameter("int8", True)
            self.declare_parameter("target_node", "")  # e.g. /ser_node: set its model_path when done
            self.progress_pub = self.create_publisher(String, "~/progress", 10)
            self.done = threading.Event()
            self.result: dict[str, Any] = {}
            self._thread = threading.Thread(target=self._train, name="ser_trainer", daemon=True)

        def start(self) -> None:
            self._thread.start()

        def _say(self, payload: dict[str, Any]) -> None:
            self.progress_pub.publish(String(data=json.dumps(payload, default=str)))

        def _train(self) -> None:
            from ..train.config import build_config
            from ..train.experiment import run_experiment
            from ..train.export import export_run

            try:
                config_file = self.get_parameter("config_file").value
                overrides = [o for o in self.get_parameter("overrides").value if o]
                config = build_config(Path(config_file) if config_file else None, overrides)
                out_dir = Path(self.get_parameter("out_dir").value)
                self._say({"event": "started", "out_dir": str(out_dir), "variant": config.variant,
                           "protocol": config.protocol})
                result = run_experiment(config, out_dir, resume=self.get_parameter("resume").value,
                                        progress=lambda row: self._say({"event": "epoch", **row}))
                self.result = {"event": "trained", "report": str(out_dir / "report.json"), "summary": result.summary}
                self._say(self.result)
                export_path = self.get_parameter("export_path").value
                if export_path:
                    folds = sorted(p.parent.name for p in out_dir.glob("*/model.pt"))
                    fold = "all" if config.protocol == "all" else folds[0]
                    paths = export_run(out_dir, export_path, int8=self.get_parameter("int8").value, fold=fold)
                    self.result = {"event": "exported", **{k: str(v) for k, v in paths.items()}}
                    self._say(self.result)
                    target = self.get_parameter("target_node").value
                    if target:
                        self._point_node_at(target, str(paths["fp32"]))
            except Exception as error:  # report every failure on the topic and in the log; the node stays up
                self.get_logger().error(f"training failed: {error}")
                self.result = {"event": "failed", "error": str(error)}
                self._say(self.result)
            finally:
                self.done.set()

        def _point_node_at(self, target: str, model_path: str) -> None:
            client = self.create_client(SetParameters, f"{target.rstrip('/')}/set_parameters")
            if not client.wait_for_service(timeout_sec=10.0):
                raise RuntimeError(f"{target} does not answer set_parameters")
            request = SetParameters.Request(parameters=[ParameterMsg(
                name="model_path", value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=model_path))])
            future = client.call_async(request)
            event = threading.Event()
            future.add_done_callback(lambda _f: event.set())
            if not event.wait(timeout=60.0):
                raise RuntimeError(f"{target} did not answer the model change in time")
            outcome = future.result().results[0]
            self.result = {"event": "reloaded" if outcome.successful else "reload_refused", "node": target,
                           "model_path": model_path, "reason": outcome.reason}
            self._say(self.result)

    return TrainerNode


def main(argv: list[str] | None = None) -> int:
    import argparse

    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from .spin import init_rclpy_with_ordered_shutdown, spin_until_done

    parser = argparse.ArgumentParser(
        prog="ser_trainer", description=__doc__,
        epilog="Parameters: config_file, overrides (string array, key=value), out_dir, resume, export_path, int8, "
               "target_node. Example: ser_trainer --ros-args -p config_file:=config/train_default.yaml "
               "-p out_dir:=runs/r1 -p export_path:=models/r1.onnx -p target_node:=/ser_node")
    parser.parse_args(rclpy.utilities.remove_ros_args(argv if argv is not None else sys.argv)[1:])
    stop = init_rclpy_with_ordered_shutdown(argv)
    node = make_trainer_class()()
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    node.start()
    spin_until_done(node, executor, node.done, stop)
    return 0 if node.result.get("event") in ("trained", "exported", "reloaded") else 1


if __name__ == "__main__":
    sys.exit(main())
