"""Credentials out of everything that is shown or stored: URLs, DSNs, specs.

``mask_url`` hides a password in every form a database or tracking address
takes: URL userinfo (``postgresql://u:pw@h/db``), query parameters
(``?password=pw``, also ``passwd``, ``pwd``, ``token``, ``secret``,
``api_key``, ``access_token``, any case) and libpq DSN key=value pairs
(``host=h password=pw``). It works on any text, so a URL inside an error
message is masked too. The spec is stored and hashed with its ``storage``
and ``tracking`` URLs masked, so a rotated password is the same sweep.
"""

from __future__ import annotations

import re

MASK = "***"
_KEYS = r"password|passwd|pwd|pass|secret|token|api_key|apikey|access_token|auth_token"
_USERINFO = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)(?P<pw>[^\s/]*)(?P<at>@)")
_QUERY = re.compile(rf"(?P<pre>[?&;](?:{_KEYS})=)(?P<pw>[^&;#\s]*)", re.IGNORECASE)
_DSN = re.compile(rf"(?P<pre>(?<![\w.])(?:{_KEYS})\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s&;']+)",
                  re.IGNORECASE)


def mask_url(text: str) -> str:
    """``text`` with every password it holds replaced by ***."""
    if not isinstance(text, str) or not text:
        return text
    out = _USERINFO.sub(lambda m: m["pre"] + (MASK if m["pw"] else "") + m["at"], text)
    out = _QUERY.sub(lambda m: m["pre"] + MASK, out)
    return _DSN.sub(lambda m: m["pre"] + MASK, out)


def has_secret(text: str | None) -> bool:
    return bool(text) and mask_url(text) != text
