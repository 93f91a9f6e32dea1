"""ser_node: speech emotion recognition for ROS 2 robots."""
__version__ = "0.1.0"
