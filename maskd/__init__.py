"""maskd: find people without a face mask in a camera feed and report them over MQTT."""

__version__ = "0.1.0"
