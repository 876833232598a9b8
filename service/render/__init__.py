"""Rendering: a `Notification` becomes subject, HTML and text in the recipient's language.

In: a notification and its event. Out: a `Rendered` value (subject, HTML with inlined CSS, text,
locale, unsubscribe link). Templates are sandboxed and autoescaped; the CSS is inlined into each
template's source once, at load. Render workers run a build recipe in child processes. It
never imports delivery, outcomes, the flow or Kafka.
"""
