"""Credentials out of text: camera URLs carry them in several forms, and none may reach a log line, an error
message, a traceback, a metric or a page.

Forms removed (separators also percent-encoded, as in a URL inside another URL's query):
- user:password@ in the authority, up to the last "@" before the path: a password may hold "@" or ":"
  (FFmpeg splits at the last "@"), and "/" written as %2F. Only a literal "/" ends the authority, so in a
  URL nested in another's query, whose "/" are all %2F, an "@" in the nested path hides that path too:
  better a word too many than a password;
- key=value pairs whose key names a credential, in the query (`?user=admin&password=x`, `?u=admin&p=x`,
  `?usr=..&pwd=..`, `?token=`, `?auth=`, `?key=`, `?secret=`...) or in the path
  (`/user=admin_password=x_channel=1`, as some camera brands take them). A value ends where the next `name=`
  begins or the URL ends, so an unencoded "&", "_", "/" or ":" inside a password is removed with it (a
  harmless word of the URL may go too).

In running text a space may end a URL or belong to a password: the user:password@ form runs to the "@"
across spaces (a line break ends it), but a key=value pair cannot tell. So the credentials of every URL the
config holds are remembered when it is read (`remember`), those holding a space or a quote in full, and
removed wherever they appear, whatever surrounds them.
"""
from __future__ import annotations

import logging
import re
from urllib.parse import unquote

_SLASH, _AT, _EQUALS = r"(?:/|%2[fF])", r"(?:@|%40)", r"(?:=|%3[dD])"

# scheme://userinfo@ ; greedy up to the last "@" before a literal "/" or a line break (a password may hold spaces)
_USERINFO = re.compile(rf"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*(?::|%3[aA]){_SLASH}{_SLASH})[^/\n]*{_AT}")

_CREDENTIAL_KEY = (r"u|p|pw|user(?:name|id)?|usr|login(?:use|pas)?|pass(?:word|wd|phrase)?|pwd|psw|"
                   r"(?:access|auth|api|id|refresh|session)?token|auth(?:orization|key)?|(?:api)?key|secret|"
                   r"sig(?:nature)?|credentials?")
_WORD = r"(?:[A-Za-z0-9]+[_.-])*"  # a key's prefix: access_token, x-auth-token, admin_password
# where the next pair begins: after "_" only a plain word (a password may hold "_")
_NEXT_KEY = (rf"(?:(?:[&;/,#]|%26|%2[fF]|%23|%3[bB]){_WORD}|_)[A-Za-z][A-Za-z0-9]*{_EQUALS}")
_KEY = rf"(?:(?<![A-Za-z0-9])|(?<=%[0-9A-Fa-f]{{2}}))(?P<key>{_WORD}(?:{_CREDENTIAL_KEY}){_EQUALS})"
_PARAM = re.compile(rf"{_KEY}(?P<value>.*?)(?={_NEXT_KEY}|[\s'\"<>]|:\s|$)", re.IGNORECASE)
_URL_PARAM = re.compile(rf"{_KEY}(?P<value>.*?)(?={_NEXT_KEY}|$)", re.IGNORECASE)  # in a URL alone: to its end
_UNBOUNDED = re.compile(r"[\s'\"<>]")  # where the patterns end a value in running text
MIN_REMEMBERED = 4  # a shorter credential is not remembered: replaced everywhere, it would take common words
_remembered: tuple[str, ...] = ()


def credentials(url: str) -> list[str]:
    """The passwords and credential values of one URL, read as FFmpeg splits it (the authority ends at the first
    "/", "?" or "#"; the user information at its last "@"; the password after the first ":")."""
    authority = re.split(r"[/?#]", url.partition("://")[2], maxsplit=1)[0]
    userinfo = authority.rpartition("@")[0]
    found = [userinfo.partition(":")[2]] if ":" in userinfo else []
    return [value for value in found + [m["value"] for m in _URL_PARAM.finditer(url)] if value]


def remember(url: str) -> None:
    """Remove the credentials of `url` that the patterns cannot bound in running text (those with a space or a
    quote) from every text `redact` sees from now on, as written and percent-decoded."""
    global _remembered
    new = {form for secret in credentials(url) if _UNBOUNDED.search(secret)
           for form in (secret, unquote(secret)) if len(form.strip()) >= MIN_REMEMBERED}
    if not new <= set(_remembered):  # longest first: one secret may hold another
        _remembered = tuple(sorted(set(_remembered) | new, key=len, reverse=True))


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by ***."""
    for secret in _remembered:
        text = text.replace(secret, "***")
    # key=value pairs first: the user:password pattern may run on to an "@" inside a nested URL's query
    # value (%40), taking the key with it, and leave the rest of that value behind
    text = _PARAM.sub(lambda m: m["key"] + "***" if m["value"] else m[0], text)
    return _USERINFO.sub(r"\g<scheme>***@", text)


class RedactingFormatter(logging.Formatter):
    """Formats a record, traceback included, then redacts the whole text: whatever a message, an exception
    or a library put in it, the line that leaves has no credentials."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
