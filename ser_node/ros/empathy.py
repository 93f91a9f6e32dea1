"""`ser_empathy`: an example behaviour on ser_node's moods: respond with empathy when an engaged person's mood stays
negative with enough confidence.

It reads moods with MoodListener (ser_node/ros/mood_listener.py), engagement from ROS4HRI
(/humans/persons/<id>/engagement_status, hri_msgs/EngagementLevel), and when a person's valence stays below
`valence_threshold` with confidence of at least `min_confidence` for `hold_s` seconds while they are engaged, it
publishes a suggested response (~/suggested_response, std_msgs/String, for the dialogue manager or TTS) and a face
expression for the robot (/robot_face/expression, hri_msgs/Expression), then waits `cooldown_s` before responding
to that person again. With `target: voices` it follows voices instead of persons (no person manager needed; the
demo uses this), and `require_engagement: false` drops the engagement condition.
"""
from __future__ import annotations

import sys
import time
from typing import Any

RESPONSES = {  # by the mood's dominant expression; the robot's face mirrors it softly
    "sad": "You sound a little down. Would you like to tell me about it?",
    "angry": "I can tell something is bothering you. Shall we take a moment?",
    "scared": "It's all right, I'm here with you. Is something worrying you?",
    "disgusted": "That didn't sound pleasant at all. Do you want to talk about it?",
}
DEFAULT_RESPONSE = "You don't sound quite yourself. Is everything all right?"


def make_behaviour_class() -> type:
    from hri_msgs.msg import EngagementLevel, Expression
    from rclpy.node import Node
    from std_msgs.msg import String

    from .mood_listener import MoodListener
    from .moods import ENGAGED

    class EmpathyBehaviour(Node):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__("ser_empathy", **kwargs)
            for name, default in (("target", "persons"), ("mood_topic", "/ser_node/mood"),
                                  ("valence_threshold", -0.3), ("min_confidence", 0.25), ("hold_s", 4.0),
                                  ("cooldown_s", 30.0), ("require_engagement", True), ("max_persons", 16),
                                  ("face_topic", "/robot_face/expression")):
                self.declare_parameter(name, default)
            self.moods = MoodListener(self, str(self.p("mood_topic")))
            self.response_pub = self.create_publisher(String, "~/suggested_response", 10)
            self.face_pub = self.create_publisher(Expression, str(self.p("face_topic")), 10)
            self.engagement: dict[str, int] = {}
            self._engagement_subs: dict[str, Any] = {}
            self._negative_since: dict[str, float] = {}
            self._last_response: dict[str, float] = {}
            self.responses: list[tuple[str, str]] = []  # (who, text), for tests and logs
            self._engagement_class = EngagementLevel
            self._string, self._expression = String, Expression
            self.create_timer(0.25, self.step)

        def p(self, name: str) -> Any:
            return self.get_parameter(name).value

        def _follow_engagement(self, person: str) -> None:
            if person in self._engagement_subs or len(self._engagement_subs) >= int(self.p("max_persons")):
                return
            self._engagement_subs[person] = self.create_subscription(
                self._engagement_class, f"/humans/persons/{person}/engagement_status",
                lambda msg, who=person: self.engagement.__setitem__(who, int(msg.level)), 10)

        def step(self) -> None:
            persons = self.p("target") == "persons"
            states = self.moods.persons() if persons else self.moods.voices()
            now = time.monotonic()
            for who, mood in states.items():
                if persons:
                    self._follow_engagement(who)
                engaged = not self.p("require_engagement") or self.engagement.get(who, 0) == ENGAGED
                negative = (mood.known and mood.valence < float(self.p("valence_threshold"))
                            and mood.confidence >= float(self.p("min_confidence")))
                if not (negative and engaged):
                    self._negative_since.pop(who, None)
                    continue
                since = self._negative_since.setdefault(who, now)
                if now - since >= float(self.p("hold_s")) and \
                        now - self._last_response.get(who, -1e9) >= float(self.p("cooldown_s")):
                    self._respond(who, mood)

        def _respond(self, who: str, mood: Any) -> None:
            self._last_response[who] = time.monotonic()
            text = RESPONSES.get(mood.expression, DEFAULT_RESPONSE)
            self.responses.append((who, text))
            self.response_pub.publish(self._string(data=text))
            face = self._expression(expression="sad", valence=-0.3, arousal=-0.2, confidence=1.0)
            face.header.stamp = self.get_clock().now().to_msg()
            self.face_pub.publish(face)
            self.get_logger().info(f"{who}: {mood.expression}, valence {mood.valence:+.2f}, confidence "
                                   f"{mood.confidence:.2f} -> \"{text}\"")

    return EmpathyBehaviour


def main(argv: list[str] | None = None) -> int:
    import argparse

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from .spin import init_rclpy_with_ordered_shutdown, spin_until_done

    parser = argparse.ArgumentParser(prog="ser_empathy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(rclpy.utilities.remove_ros_args(argv if argv is not None else sys.argv)[1:])
    stop = init_rclpy_with_ordered_shutdown(argv)
    node = make_behaviour_class()()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin_until_done(node, executor, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
