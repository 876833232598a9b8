"""The flow: records from Kafka go through the stages, and what they lead to goes back.

In: `RawRecord`s from the Kafka adapter. Out: for each record, the outcomes, dead letters and
retry tickets to write in the transaction that moves its offset. Many records are in flight at
once within a budget, records with the same key in order; partitions pause under backpressure
or while a stage holds consumption. The handler calls the stages in order: decode, route,
policy, render, deliver, and outcomes decide the rest. Only `app.py` and the tools import it.
"""
