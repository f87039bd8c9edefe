"""The flespi side: topic grammar, the upstream MQTT connection, REST calls."""
