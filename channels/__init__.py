"""Channel adapters, one module per protocol, selected by ``type:`` in the config.

Inbound adapters (``Inbound``) turn what arrives into a ``router.message.Message`` and hand it
to a ``Sink``; outbound senders (``Sender``) deliver a routed message to a team's inbox.
A channel never imports another channel; it receives what it needs from ``router/``.
"""
