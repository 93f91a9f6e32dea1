"""Rosbag2 without ROS: writing, reading, salvaging and evaluating bags."""
