"""Herald: a Kafka-native service that turns domain events into transactional email."""

__version__ = "0.1.0"
