"""Keeping configured secrets out of everything minilog shows: the UI, its JSON, logs.

Owns what counts as a secret in a component's arguments and how it is hidden. Alloy
shows a ``secret`` value as ``(secret)``; minilog does the same for every value of the
config's ``Secret`` type (``basic_auth.password``, ``bearer_token``, and whatever later
produces a ``Secret``, such as a ``local.file`` with ``is_secret``) and, beyond Alloy,
for the userinfo of any URL, every value of a ``headers`` map, and any argument whose
name says it holds a credential (``password``, ``*_token``, ``*_secret``, ...).

Two layers, because a component may copy a secret into a plain string (a writer's
endpoint settings, an error message):

- structural: :meth:`Redactor.value` walks arguments, exports and debug info and
  replaces secret values by ``(secret)``;
- textual: every string shown also has each secret *known* to the agent (collected from
  its arguments by :meth:`Redactor.learn`) and any URL userinfo replaced.

:class:`RedactingFilter` applies the textual layer to every log record; the CLI installs
it on its one log handler.
"""

from __future__ import annotations

import base64
import logging
import re
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from minilog.config.stdlib import Secret

__all__ = [
    "SECRET_TEXT",
    "RedactingFilter",
    "Redactor",
    "is_secret_name",
    "secrets_in",
    "strip_userinfo",
]

#: What a hidden value is shown as (Alloy's text for a secret).
SECRET_TEXT: Final = "(secret)"

#: Secrets shorter than this are hidden where they are a whole value, not inside text:
#: replacing every "ab" in every log line would hide more than it protects.
_MIN_IN_TEXT: Final = 4

# ``scheme://userinfo@``: the userinfo ends at the first "@" before any "/", "?", "#"
# or whitespace, so an "@" in a path or query is left alone.
_USERINFO: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]+@")

# Argument names that hold a credential in Alloy's components (password, bearer_token,
# client_secret, api_key, key_pem, credentials, ...). ``*_file`` names hold paths.
_SECRET_NAME: Final = re.compile(
    r"(?:^|_)(?:password|passwd|secret|token|api_?key|key_pem|credentials?)$"
)

#: Arguments whose every value is hidden: header values often carry credentials.
_SECRET_MAPS: Final = frozenset({"headers", "http_headers", "proxy_connect_header"})


def is_secret_name(name: str) -> bool:
    """True for an argument name that holds a credential by its name alone."""
    return _SECRET_NAME.search(name) is not None


def strip_userinfo(text: str) -> str:
    """Every ``scheme://user:password@`` in ``text`` becomes ``scheme://(secret)@``."""
    if "@" not in text:
        return text
    return _USERINFO.sub(lambda m: m.group(1) + SECRET_TEXT + "@", text)


def _url_secrets(text: str) -> Iterator[str]:
    """The userinfo parts of a URL string, as written and percent-decoded, and the
    ``Authorization: Basic`` token an HTTP client derives from them."""
    if "@" not in text or "://" not in text:
        return
    try:
        parts = urlsplit(text)
    except ValueError:
        return
    if "@" not in parts.netloc:
        return
    userinfo = parts.netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    for raw in (userinfo, user, password):
        yield raw
        yield unquote(raw)
    yield _basic_token(unquote(user), unquote(password))


def _basic_token(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _collect(value: Any, name: str, out: set[str]) -> None:
    if isinstance(value, Secret):
        out.add(str.__str__(value))
    elif isinstance(value, str):
        if is_secret_name(name):
            out.add(value)
        out.update(_url_secrets(value))
    elif isinstance(value, Mapping):
        hide_all = name in _SECRET_MAPS
        for key, item in value.items():
            if hide_all and isinstance(item, str):
                out.add(str.__str__(item))
            _collect(item, str(key), out)
        user, password = value.get("username"), value.get("password")
        if isinstance(user, str) and isinstance(password, str) and password:
            out.add(_basic_token(user, str.__str__(password)))
    elif isinstance(value, list | tuple):
        for item in value:
            _collect(item, name, out)


def secrets_in(args: Mapping[str, Any]) -> set[str]:
    """Every secret string in a component's decoded arguments (see the module doc)."""
    out: set[str] = set()
    _collect(args, "", out)
    out.discard("")
    return out


class Redactor:
    """The secrets one agent knows, and the functions that hide them.

    ``learn`` only ever adds: a secret once configured stays hidden for the agent's
    life, even after a reload removed it (an old error message may still quote it).
    Every live ``Redactor`` also applies to log records (:class:`RedactingFilter`).
    """

    def __init__(self) -> None:
        self._known: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        _LIVE.add(self)

    def learn(self, args: Mapping[str, Any]) -> None:
        """Remember the secrets in ``args`` (a component's decoded arguments)."""
        new = secrets_in(args) - self._known
        if not new:
            return
        self._known |= new
        long_enough = sorted(
            (s for s in self._known if len(s) >= _MIN_IN_TEXT), key=len, reverse=True
        )
        self._pattern = (
            re.compile("|".join(re.escape(s) for s in long_enough))
            if long_enough
            else None
        )

    def text(self, text: str) -> str:
        """``text`` with URL userinfo and every known secret replaced."""
        if text in self._known:
            return SECRET_TEXT
        if self._pattern is not None:
            text = self._pattern.sub(SECRET_TEXT, text)
        return strip_userinfo(text)

    def value(self, value: Any, name: str = "") -> Any:
        """A JSON-able copy of ``value`` with secrets hidden; ``name`` is the argument
        name ``value`` was found under (it decides for credential-named arguments).

        Values that are not JSON types (capsules such as a receiver) are shown as their
        ``repr``, which is hidden from secrets too.
        """
        if isinstance(value, Secret):
            return SECRET_TEXT
        if isinstance(value, str):
            return SECRET_TEXT if value and is_secret_name(name) else self.text(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, Mapping):
            hide_all = name in _SECRET_MAPS
            return {
                str(k): SECRET_TEXT if hide_all else self.value(v, str(k))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v, name) for v in value]
        return self.text(repr(value))


_LIVE: weakref.WeakSet[Redactor] = weakref.WeakSet()

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


def _hide(text: str, redactors: Iterable[Redactor]) -> str:
    for redactor in redactors:
        text = redactor.text(text)
    return strip_userinfo(text)


class RedactingFilter(logging.Filter):
    """Hides known secrets and URL userinfo in a record's message, its ``extra``
    fields and its exception text, for every live :class:`Redactor`.

    Install it on a handler (a logger's own filters do not see records propagated
    from its children).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        redactors = list(_LIVE)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a malformed call: the handler reports it as it formats
        hidden = _hide(message, redactors)
        if hidden != message:
            record.msg, record.args = hidden, None
        for key, value in list(record.__dict__.items()):
            if key in _STANDARD_ATTRS or value is None:
                continue
            text = value if isinstance(value, str) else str(value)
            hidden = _hide(text, redactors)
            if hidden != text:
                record.__dict__[key] = hidden
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = str(exc)
            hidden = _hide(text, redactors)
            if hidden != text:
                # The exception object cannot be edited: show a stand-in of the same
                # type name whose text is the redacted one.
                stand_in = type(type(exc).__name__, (Exception,), {})(hidden)
                record.exc_info = (type(stand_in), stand_in, record.exc_info[2])
                record.exc_text = None
        return True
