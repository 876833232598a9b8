"""The Kafka adapter, a leaf below every stage.

In: topics to consume, records to write. Out: `RawRecord`s as consumed, and transactions that
write `Outbound` records together with the consumer offsets they settle. librdkafka runs on
threads of its own (poll, pause/resume, seek, rebalance callbacks); the transactional producer
renews a client stuck inside librdkafka; offsets are tracked per partition so a finished record
is never committed past an unfinished one; topics are created where missing. It never imports
a business stage (events, routing, policy, render, delivery, outcomes, stores) nor the flow.
"""
