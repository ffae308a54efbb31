"""Credentials out of everything edgeseg prints, reports or serves: ``rtsp://admin:hunter2@cam/stream`` is
shown as ``rtsp://admin:***@cam/stream``. IP cameras are addressed with the password in the URL, and
messages, run reports, the live page and logs travel further than the device. The one function for all of
them; the capture itself still gets the real URL."""

from __future__ import annotations

import re

# scheme://user:password@ (the password may be empty; a user alone has nothing to hide)
_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):[^/\s@]*@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _CREDENTIALS.sub(r"\g<head>:***@", text)
