"""``type:`` in the config → the component and its config model, as lazy import strings.

Importing a channel happens only when a config uses it, so a daemon with only webhooks never
imports the Telegram or IMAP libraries (uvicorn ``HTTP_PROTOCOLS``).
"""

from __future__ import annotations

import importlib
from typing import Literal, NamedTuple

Kind = Literal["input", "output"]


class Entry(NamedTuple):
    """Where a component and its config model live, as ``module:attribute`` strings."""

    component: str
    config: str


INPUTS: dict[str, Entry] = {
    "webhook": Entry("channels.webhook:WebhookChannel", "channels.webhook:WebhookConfig"),
}

OUTPUTS: dict[str, Entry] = {
    "maildir": Entry("channels.maildir:MaildirSender", "channels.maildir:MaildirConfig"),
    "webhook": Entry("channels.webhook:WebhookSender", "channels.webhook:WebhookOutConfig"),
}


def table(kind: Kind) -> dict[str, Entry]:
    """The registry of inputs or of outputs."""
    return INPUTS if kind == "input" else OUTPUTS


def import_string(spec: str) -> type:
    """Import ``module:attribute``; ``ImportError`` names the string when it is wrong."""
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)  # type: ignore[no-any-return]
    except AttributeError:
        raise ImportError(f'attribute "{attribute}" not found in module "{module_name}"') from None
