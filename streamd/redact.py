"""Credentials out of text: camera URLs carry them in several forms, and none may reach a log line, an error
message, a traceback, a metric or a page.

Forms removed (separators also percent-encoded, as in a URL inside another URL's query):
- user:password@ in the authority, up to the last "@" before the path: a password may hold "@" or ":"
  (FFmpeg splits at the last "@"), and "/" written as %2F. Only a literal "/" ends the authority, so in a
  URL nested in another's query, whose "/" are all %2F, an "@" in the nested path hides that path too:
  better a word too many than a password;
- key=value pairs whose key names a credential, in the query (`?user=admin&password=x`, `?usr=..&pwd=..`,
  `?token=`, `?auth=`, `?key=`, `?secret=`...) or in the path (`/user=admin_password=x_channel=1`, as some
  camera brands take them). A value ends where the next `name=` begins or the URL ends, so an unencoded
  "&", "_", "/" or ":" inside a password is removed with it (a harmless word of the URL may go too).
"""
from __future__ import annotations

import logging
import re

_SLASH, _AT, _EQUALS = r"(?:/|%2[fF])", r"(?:@|%40)", r"(?:=|%3[dD])"

# scheme://userinfo@ ; greedy up to the last "@" before a literal "/" or a space
_USERINFO = re.compile(rf"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*(?::|%3[aA]){_SLASH}{_SLASH})[^/\s]*{_AT}")

_CREDENTIAL_KEY = (r"user(?:name|id)?|usr|login(?:use|pas)?|pass(?:word|wd|phrase)?|pwd|psw|"
                   r"(?:access|auth|api|id|refresh|session)?token|auth(?:orization|key)?|(?:api)?key|secret|"
                   r"sig(?:nature)?|credentials?")
_WORD = r"(?:[A-Za-z0-9]+[_.-])*"  # a key's prefix: access_token, x-auth-token, admin_password
# where the next pair begins: after "_" only a plain word (a password may hold "_")
_NEXT_KEY = (rf"(?:(?:[&;/,#]|%26|%2[fF]|%23|%3[bB]){_WORD}|_)[A-Za-z][A-Za-z0-9]*{_EQUALS}")
_PARAM = re.compile(
    rf"(?:(?<![A-Za-z0-9])|(?<=%[0-9A-Fa-f]{{2}}))(?P<key>{_WORD}(?:{_CREDENTIAL_KEY}){_EQUALS})"
    rf"(?P<value>.*?)(?={_NEXT_KEY}|[\s'\"<>]|:\s|$)",
    re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by ***."""
    # key=value pairs first: the user:password pattern may run on to an "@" inside a nested URL's query
    # value (%40), taking the key with it, and leave the rest of that value behind
    text = _PARAM.sub(lambda m: m["key"] + "***" if m["value"] else m[0], text)
    return _USERINFO.sub(r"\g<scheme>***@", text)


class RedactingFormatter(logging.Formatter):
    """Formats a record, traceback included, then redacts the whole text: whatever a message, an exception
    or a library put in it, the line that leaves has no credentials."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
