"""The loop's events on an MQTT broker (Home Assistant, Node-RED, Frigate-style automations): every event on
``TOPIC/events``, whether a pet is in view on ``TOPIC/state`` and each zone's on ``TOPIC/zone/NAME`` (both
retained, so a subscriber that connects later gets them, and published again after a reconnect). The
broker is never in the loop's way: paho's network thread sends, a lost broker is retried in the background
and counted, and messages published while it is away are dropped (events are about now)."""

from __future__ import annotations

import json
import threading
from urllib.parse import unquote, urlsplit

from edgeseg.errors import EdgesegError
from edgeseg.redact import redact


def parse_url(url: str) -> tuple[str, int, str, str | None, str | None]:
    """``mqtt://[user:pass@]host[:port]/topic`` -> (host, port, topic, user, password)."""
    parts = urlsplit(url)
    topic = parts.path.lstrip("/")
    try:
        port = parts.port or 1883
    except ValueError:
        port = -1
    if parts.scheme != "mqtt" or not parts.hostname or not topic or port < 1 or any(c in topic for c in "#+"):
        raise EdgesegError(f"--mqtt {redact(url)!r}: expected mqtt://[USER:PASSWORD@]HOST[:PORT]/TOPIC (a topic "
                           "without wildcards)")
    return (parts.hostname, port, topic, unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None)


class Publisher:
    """Publishes :class:`~edgeseg.runtime.loop.events.Events` output; an ``outputs`` entry."""

    def __init__(self, url: str, client_id: str = "") -> None:
        try:
            import paho.mqtt.client as mqtt
        except ModuleNotFoundError:
            raise EdgesegError("--mqtt needs paho-mqtt: pip install 'edgeseg[mqtt]'") from None
        host, port, self.topic, user, password = parse_url(url)
        self.label = redact(url)
        self.reconnects = 0
        self._connected_once = False
        # retained topic -> (the state it says, its payload), published again after a reconnect
        self._retained: dict[str, tuple[bool, str]] = {}
        self._lock = threading.Lock()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if user is not None:
            self._client.username_pw_set(user, password)
        self._client.on_connect = self._on_connect
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._client.max_queued_messages_set(100)  # a long outage must not grow memory: state is resent anyway
        try:
            self._client.connect_async(host, port, keepalive=30)
        except (OSError, ValueError) as e:
            raise EdgesegError(f"--mqtt {self.label}: {e}") from None
        self._client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        with self._lock:
            if self._connected_once:
                self.reconnects += 1
            self._connected_once = True
            for topic, (_, payload) in self._retained.items():  # the broker may have lost them: say them again
                client.publish(topic, payload, qos=1, retain=True)

    def _retain(self, topic: str, state: bool, payload: dict) -> None:
        """Publish ``payload`` retained on ``topic`` when ``state`` differs from the last one published there."""
        with self._lock:
            if topic in self._retained and self._retained[topic][0] == state:
                return
            text = json.dumps(payload)
            self._retained[topic] = (state, text)
        self._client.publish(topic, text, qos=1, retain=True)

    def __call__(self, event: dict, states: dict) -> None:
        self._client.publish(f"{self.topic}/events", json.dumps(event, separators=(",", ":")), qos=0)
        self._retain(f"{self.topic}/state", states["pet"], {"pet": states["pet"], "since": event["time"]})
        for name, occupied in states["zones"].items():
            self._retain(f"{self.topic}/zone/{name}", occupied, {"occupied": occupied, "since": event["time"]})

    def close(self) -> None:
        self._client.disconnect()  # sent by the network thread, then stopped
        self._client.loop_stop()
