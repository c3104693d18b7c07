"""Remove passwords from text before it reaches an error, a log line or stats.

Driver error messages sometimes echo the connection string they were given
(``invalid dsn: ... password=...``) and URLs carry ``user:password@``. The pool
never knows how ``connect`` was built, so it scrubs by pattern, and callers that
do know the password (the Django backends) pass it as an explicit secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "********"

# key=value pairs in libpq / ODBC style strings, quoted or not: password='x y'.
# Not MySQL's "(using password: YES)", which says whether one was sent.
_KEY_VALUE = re.compile(
    r"""(?ix)\b(password|passwd|pwd|sslpassword)(\s*[=:]\s*)(?!(?:YES|NO)\))('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s,;&)]+)"""
)
# scheme://user:password@host
_URL_USERINFO = re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@\s]*)(@)")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with passwords replaced by a mask.

    ``secrets`` are literal values to remove wherever they appear (empty
    strings and very short values are ignored: masking "a" would garble text).
    """
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, MASK)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", text)
