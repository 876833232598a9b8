"""The public listener: RFC 8058 one-click unsubscribe, over HTTP, for recipients and mailboxes.

In: requests to the path of `links.unsubscribe_url`, and /healthz. Out: `Preference` records
(opted out of a category) on the preferences topic, acknowledged by the broker before the
answer. A Starlette app served by uvicorn inside Herald's event loop, on a port of its own: the
internal /metrics endpoint stays unreachable from outside. It never imports the flow, the
wiring, rendering, delivery or the policy stage; it reads no table, it only writes choices.
"""

from service.public.server import PublicServer, start_public

__all__ = ["PublicServer", "start_public"]
