"""Launches ser_node with a parameters file and the usual overrides, and drives its lifecycle the launch way.

  ros2 launch ser_node ser_node.launch.py audio_topic:=/robot/mic/audio namespace:=head device:=cuda
  ros2 launch ser_node ser_node.launch.py hri_voices:=publish     # no upstream voice module: name voices itself

The node starts unconfigured (--no-autostart); this file asks for `configure` and, once the node reports
`inactive`, for `activate` (launch_ros lifecycle events), unless autostart:=false, which leaves the transitions to
a lifecycle manager. A failed configure leaves the node unconfigured with the reason in its log and /diagnostics.
"""
import os

from ament_index_python.packages import get_package_share_directory
import launch.events
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("ser_node")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "ser_node.yaml"),
                              description="parameters YAML"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("audio_topic", default_value="audio", description="audio topic to listen to"),
        DeclareLaunchArgument("model_path", default_value="", description="ONNX model ('' = shipped default)"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu | cuda | tensorrt"),
        DeclareLaunchArgument("hri_voices", default_value="follow",
                              description="ROS4HRI voices: follow (an upstream voice module) | publish (own ids) | off"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate from this launch file (false: a lifecycle manager does)"),
    ]
    node = LifecycleNode(
        package="ser_node",
        executable="ser_node",
        name="ser_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[LaunchConfiguration("params_file"),
                    {"model_path": LaunchConfiguration("model_path"), "device": LaunchConfiguration("device"),
                     "hri_voices": LaunchConfiguration("hri_voices")}],
        remappings=[("audio", LaunchConfiguration("audio_topic"))],
        arguments=["--no-autostart"],
    )
    autostart = IfCondition(LaunchConfiguration("autostart"))
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=launch.events.matches_action(node),
                                            transition_id=Transition.TRANSITION_CONFIGURE), condition=autostart)
    activate_when_inactive = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=launch.events.matches_action(node),
                                              transition_id=Transition.TRANSITION_ACTIVATE))]), condition=autostart)
    # OPENBLAS threads would fight ONNX Runtime's.
    return LaunchDescription([SetEnvironmentVariable("OPENBLAS_NUM_THREADS", "1"), *arguments, node,
                              activate_when_inactive, configure])
