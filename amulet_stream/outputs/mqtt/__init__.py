"""The MQTT sink: the connection, the outbox (memory and durable), Home Assistant discovery."""
