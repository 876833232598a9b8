"""Command-line tools beside the running service: checks, preview, examples, the local outbox.

They read the same configuration as `herald run` and may import anything; nothing of the
running service imports them.
"""
