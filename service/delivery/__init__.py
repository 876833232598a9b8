"""Delivery: an `Email` goes to the SMTP relay, over a pool of persistent connections.

In: an `Email` (envelope and wire bytes), composed here from a `Letter`. Out: the relay's
acceptance, or a `DeliveryError` that says whether trying again can help. A circuit breaker
keeps a relay that fails as a whole from being hammered. It depends on no template, route or
Kafka type: only on its own values, settings, errors and metrics.
"""
