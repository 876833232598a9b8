"""Decoding: the bytes of a record become a typed `Event`.

In: a topic and a value (Avro in the single-object encoding, or the Confluent wire format
through a schema registry). Out: an `Event` resolved from the writer's schema to the current
reader schema, or a `DecodeError`. It knows nothing of Kafka's client, routing or mail.
"""
