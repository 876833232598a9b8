"""Feedback: what happened to a mail after the relay said 250, as reports tell it.

Enters: bounce and complaint mail (RFC 3464 DSNs, RFC 5965 ARF reports, other bounce formats),
from `.eml` files, maildirs or the SMTP listener of the bounce address, and the signed webhooks
of SES (via SNS), Postmark, SendGrid and Mailgun. Leaves: `herald.feedback.MailFeedback`
records on the feedback topic, keyed by Message-ID (else the report's id). Parsing is pure
(`reports`, `webhooks`); only `publisher`, `listener` and `routes` touch the network.

Never imports the flow, the app, rendering or delivery: feedback is read, not sent.
"""
