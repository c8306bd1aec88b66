"""Tables and lists that once grew with every message or window stay bounded: paho's publish
acknowledgements (one entry per QoS 0 score before) and the per-window timing lists of `run`
without metrics. The soak (tests/test_soak.py, bench/soak.py) measures the whole process."""

from __future__ import annotations

from pathlib import Path

import pytest

from amulet_stream.outputs.mqtt.settings import MqttSettings
from amulet_stream.outputs.mqtt.sink import MqttSink
from amulet_stream.scoring.model import Model, default_model_path
from amulet_stream.scoring.records import StreamStats
from amulet_stream.service.config import Config
from amulet_stream.service.sinks import Sinks

from .servers import Mosquitto, Subscriber, have, wait_until


@pytest.mark.skipif(have("mosquitto") is not None, reason=str(have("mosquitto")))
def test_acknowledgements_do_not_pile_up_with_score_messages(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    sub = Subscriber(broker.port, "amulet/m1/score")
    sink = MqttSink(MqttSettings(port=broker.port, scores=True, client_id="flat"))
    sink.start()
    try:
        sink.add_stream("m1", 0.3, "ab" * 32)
        n = 3000
        for i in range(n):
            sink.publish_record(
                {"event": "score", "stream": "m1", "start": i, "end": i + 1, "score": 0.1}
            )
            if i % 500 == 499:  # within the outbox's bound of 1000 scores
                wait_until(lambda: sink.queued() == 0, 30, "the outbox drained")
        wait_until(lambda: len(sub.on("amulet/m1/score")) == n, 60, f"{n} scores")
        assert sink.queued() == 0
        assert len(sink._link.acks) == 0  # 3000 before: one entry per message, never removed
    finally:
        sink.close(2.0)
        sub.close()
        broker.stop()


def test_timing_lists_are_drained_without_metrics() -> None:
    model = Model(default_model_path())
    sinks = Sinks(Config(), model, None, live=True)
    stats = StreamStats()
    for _ in range(1000):  # a day of windows would be 340 000 of each
        stats.inference.append(0.001)
        stats.lags.append(0.2)
        sinks.after_block("m1", stats)
    assert stats.inference == [] and stats.lags == []
