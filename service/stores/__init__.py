"""Stores: state Herald keeps outside Kafka, embedded (SQLite) or shared (Redis).

In: keys and values. Out: what was stored, or `StoreUnavailable` while the store cannot be
reached. Today the idempotency store, which remembers what became of each notification across
restarts. It imports no stage, the flow or Kafka.
"""
