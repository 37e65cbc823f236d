"""What a site tells the coordinator when it does not answer a message: a code and a short reason.

The reason sent is built only from error codes, rule names, hashes, numbers and exception CLASS names,
never from an exception's text (which may hold patient IDs, file paths or values read from the data);
the full exception goes to the site's own log (``fedpcr.client``; ClientApp logs never leave the site).
"""

from __future__ import annotations

import logging

from flwr.app import Error, Message

from client.site import SiteRefusal
from common.protocol import REFUSED, SITE_ERROR, ProtocolError

log = logging.getLogger("fedpcr.client")

#: Longest reason a site sends (a ProtocolError names a config key and the coordinator's own value).
MAX_REASON = 300


def public_reason(exc: BaseException, message_type: str) -> tuple[int, str]:
    """(error code, reason the coordinator may see) for an exception raised while handling a message."""
    if isinstance(exc, SiteRefusal):
        return exc.code, f"fedpcr: {exc.public}"
    if isinstance(exc, ProtocolError):  # the round config's keys/values: the coordinator's own text
        return exc.code, f"fedpcr: {str(exc)[:MAX_REASON]}"
    if isinstance(exc, (FileNotFoundError, ValueError)):
        return REFUSED, f"fedpcr: site data missing or unreadable ({type(exc).__name__}); details in the site's log"
    return SITE_ERROR, (f"fedpcr: site error while handling {message_type} ({type(exc).__name__}); "
                        "details in the site's log")


def error_reply(msg: Message, exc: BaseException) -> Message:
    """Log ``exc`` in full locally and answer ``msg`` with its code and public reason."""
    message_type = str(msg.metadata.message_type)
    if isinstance(exc, (SiteRefusal, ProtocolError)):
        log.error("refused %s: %s", message_type, exc)
    else:
        log.error("failed %s: %s: %s", message_type, type(exc).__name__, exc, exc_info=exc)
    code, reason = public_reason(exc, message_type)
    return Message(error=Error(code=code, reason=reason), reply_to=msg)
