"""The policy stage, between routing and rendering: may this notification go now, or never?

In: a `Notification`. Out: a `Decision` with its reason: go now, or never with the status its
outcome takes (a route's condition was false, the mail was already accepted, an earlier try may
have been delivered). Pure rules run first; the idempotency claim runs last, since it reserves
the notification for this try. It knows no Kafka, no SMTP, no templates: it imports routing,
the stores and the outcome statuses only.
"""
