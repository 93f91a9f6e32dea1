"""Starting, spinning and stopping a node process in a defined order (the node, the demo and the trainer node)."""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.signals import SignalHandlerOptions


def start_node(node: Any) -> bool:
    """configure + activate (what the console script does unless --no-autostart)."""
    node.trigger_configure()
    if node.state_label() != "inactive":
        return False
    node.trigger_activate()
    return node.state_label() == "active"


def init_rclpy_with_ordered_shutdown(argv: list[str] | None) -> threading.Event:
    """rclpy.init without rclpy's own SIGINT/SIGTERM handling, which shuts the context down at once, under the
    node's threads still waiting on it (the cause of rare 'terminate called without an active exception'
    aborts). A signal only sets the returned event; spin_until_done then tears down in a defined order."""
    stop = threading.Event()
    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    return stop


def spin_until_done(node: Any, executor: Any, *events: threading.Event | None) -> None:
    """Spins until one of `events` is set (a signal, work done) or rclpy stops, then shuts down in order:
    the node's own threads (audio intake, classification worker) joined, the executor, the node, rclpy."""
    try:
        while rclpy.ok() and not any(e is not None and e.is_set() for e in events):
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop_threads = getattr(node, "stop_threads", None)
        if stop_threads is not None:
            stop_threads()
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
