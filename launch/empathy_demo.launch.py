"""ser_node and the example empathic behaviour (ser_empathy), together.

  ros2 launch ser_node empathy_demo.launch.py audio_topic:=/robot/mic/audio                 # persons, engaged only
  ros2 launch ser_node empathy_demo.launch.py target:=voices require_engagement:=false       # no person manager

ser_node is included from ser_node.launch.py (lifecycle driven the same way); ser_empathy reads /<namespace>/ser_node/mood
and publishes ~/suggested_response (std_msgs/String) and /robot_face/expression (hri_msgs/Expression). README,
"What a behaviour reads", walks through it.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("ser_node")
    arguments = [
        DeclareLaunchArgument("namespace", default_value="", description="namespace of ser_node"),
        DeclareLaunchArgument("audio_topic", default_value="audio", description="audio topic to listen to"),
        DeclareLaunchArgument("target", default_value="persons", description="persons (ROS4HRI) | voices"),
        DeclareLaunchArgument("require_engagement", default_value="true",
                              description="respond only to persons whose engagement_status is ENGAGED"),
        DeclareLaunchArgument("face_topic", default_value="/robot_face/expression",
                              description="where the robot's face expression goes"),
    ]
    ser_node = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, "launch", "ser_node.launch.py")),
        launch_arguments={"namespace": LaunchConfiguration("namespace"),
                          "audio_topic": LaunchConfiguration("audio_topic")}.items())
    mood_topic = PythonExpression(["'/' + '", LaunchConfiguration("namespace"), "'.strip('/') + '/ser_node/mood' "
                                   "if '", LaunchConfiguration("namespace"), "' else '/ser_node/mood'"])
    behaviour = Node(package="ser_node", executable="ser_empathy", name="ser_empathy", output="screen",
                     parameters=[{"target": LaunchConfiguration("target"), "mood_topic": mood_topic,
                                  "require_engagement": LaunchConfiguration("require_engagement"),
                                  "face_topic": LaunchConfiguration("face_topic")}])
    return LaunchDescription([*arguments, ser_node, behaviour])
