"""Fault-injection (chaos) suite: Herald under kill -9, rebalances, broker and SMTP faults,
an unavailable results topic and poison records; see docs/reliability.md."""
