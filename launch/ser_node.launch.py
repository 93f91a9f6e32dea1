"""Launches ser_node (configured and activated) with a parameters file and the usual overrides.

  ros2 launch ser_node ser_node.launch.py audio_topic:=/robot/mic/audio namespace:=head device:=cuda
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("ser_node")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "ser_node.yaml"),
                              description="parameters YAML"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("audio_topic", default_value="audio", description="audio topic to listen to"),
        DeclareLaunchArgument("model_path", default_value="", description="ONNX model ('' = shipped default)"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu | cuda | tensorrt"),
    ]
    node = LifecycleNode(
        package="ser_node",
        executable="ser_node",
        name="ser_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[LaunchConfiguration("params_file"),
                    {"model_path": LaunchConfiguration("model_path"), "device": LaunchConfiguration("device")}],
        remappings=[("audio", LaunchConfiguration("audio_topic"))],
    )
    # The console script configures and activates itself (autostart); OPENBLAS threads would fight ORT's.
    return LaunchDescription([SetEnvironmentVariable("OPENBLAS_NUM_THREADS", "1"), *arguments, node])
