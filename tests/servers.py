"""Real servers for the tests, on 127.0.0.1 and free ports: Mosquitto, Prometheus; an MQTT
subscriber that records what arrives."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Mosquitto:
    """A broker with its own config folder; start/stop keep the port."""

    def __init__(self, folder: Path, extra: str = "", persistence: bool = False) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        lines = [f"listener {self.port} 127.0.0.1", extra]
        if "allow_anonymous" not in extra:
            lines.append("allow_anonymous true")
        if persistence:
            data = folder / "data"
            data.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {data}/"]
        else:
            lines.append("persistence false")
        if os.geteuid() == 0:
            lines.append("user root")  # stay root: the test folders belong to root
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = folder / "mosquitto.log"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [binary("mosquitto") or "mosquitto", "-c", str(self.conf)],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_until(self._listening, 10, f"mosquitto on port {self.port}")

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {self.log.read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class Received:
    topic: str
    payload: str
    retain: bool
    at: float
    """time.time() of arrival."""


class Subscriber:
    """Subscribes to a pattern (QoS 1) and records every message with its arrival time."""

    def __init__(
        self,
        port: int,
        pattern: str = "amulet/#",
        persistent: bool = False,
        tls: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        client_id: str = "",
    ) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.reconnect_delay_set(0.2, 1)
        if tls:
            self.client.tls_set(**tls)
        if auth:
            self.client.username_pw_set(*auth)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(pattern, qos=1)
        self.client.on_message = self._on_message
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        if persistent:
            props.SessionExpiryInterval = 3600
        self.client.connect(
            "127.0.0.1", port, keepalive=10, clean_start=not persistent, properties=props
        )
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(
                Received(msg.topic, msg.payload.decode(), bool(msg.retain), time.time())
            )

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def binary(name: str) -> str | None:
    """Path of a program on PATH or in /usr/sbin (Debian puts mosquitto there)."""
    found = shutil.which(name)
    if found is None and Path("/usr/sbin", name).is_file():
        found = str(Path("/usr/sbin", name))
    return found


def have(name: str) -> str | None:
    """None if the program is installed, else the skip reason."""
    return None if binary(name) else f"{name} not installed (apt-get install it)"
