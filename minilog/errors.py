"""The whole minilog exception tree: every error minilog raises is a ``MinilogError``.

    MinilogError
    ├── ConfigError               bad configuration; carries every Diagnostic
    │   └── RuleError             a relabel ``rule`` block Alloy would refuse
    ├── StageError                a ``loki.process`` stage with invalid arguments
    ├── Re2Error (ValueError)     a regex that is not RE2 (or Python reads otherwise)
    ├── EscapeError (ValueError)  a bad escape in a Go string literal
    ├── LabelError (ValueError)   an invalid label name or value, refused before sending
    ├── DecodeError (ValueError)  a push body that cannot be decoded (receiver side)
    │   └── BodyTooLargeError     ...larger than allowed, or declaring it is
    ├── RequestRefused            the receiver refuses a push request (Loki's answer)
    ├── DockerError               the Docker Engine API answered with an error
    │   └── DockerUnavailableError  the socket is missing, refused, or not permitted
    ├── PushError                 a push to Loki failed; ``retriable``: try again?
    │   ├── RateLimitedError      HTTP 429 (retriable)
    │   ├── ServerError           HTTP 5xx (retriable)
    │   ├── PushConnectionError   transport error or timeout (retriable)
    │   └── ClientRequestError    any other 4xx (never retried)
    ├── ClosedError               an object was used after ``aclose()``/``close()``
    │   └── BrokenError           ...or cannot be used: a task inside it died of a bug
    ├── WouldBlockError           a ``*_nowait`` call could not proceed without waiting
    └── BenchError                ``minilog bench`` cannot set up or go on (a tool
                                  missing, Loki not ready, Docker refusing a request)

Foreign exceptions are mapped to these once, at the boundary module that meets them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "BenchError",
    "BodyTooLargeError",
    "BrokenError",
    "ClientRequestError",
    "ClosedError",
    "ConfigError",
    "DecodeError",
    "Diagnostic",
    "DockerError",
    "DockerUnavailableError",
    "EscapeError",
    "LabelError",
    "MinilogError",
    "PushConnectionError",
    "PushError",
    "RateLimitedError",
    "Re2Error",
    "RequestRefused",
    "RuleError",
    "ServerError",
    "StageError",
    "WouldBlockError",
]


class MinilogError(Exception):
    """Root of every error minilog raises."""


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One positioned configuration problem; line and column are 1-based."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class ConfigError(MinilogError):
    """A configuration could not be loaded; ``diagnostics`` lists every problem."""

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic | str) -> None:
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic("<config>", 0, 0, diagnostics)]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))

    @property
    def path(self) -> str:
        return self.diagnostics[0].path if self.diagnostics else ""

    @property
    def line(self) -> int:
        return self.diagnostics[0].line if self.diagnostics else 0

    @property
    def column(self) -> int:
        return self.diagnostics[0].column if self.diagnostics else 0


class LabelError(MinilogError, ValueError):
    """A label name or value that Loki would refuse."""


class DecodeError(MinilogError, ValueError):
    """A push request body that could not be decoded."""


class DockerError(MinilogError):
    """The Docker Engine API answered with an error status."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DockerUnavailableError(DockerError):
    """The Docker daemon cannot be reached (no socket, refused, permission denied)."""


class PushError(MinilogError):
    """A push to Loki failed.

    ``retriable`` is the retry policy: ask the error, keep no list. ``body`` is the
    first line of Loki's answer (what its clients log), ``response_text`` the whole
    answer as far as it was read (what says which streams were refused), and
    ``retry_after`` the seconds a ``Retry-After`` header asked for (``None`` without
    one).
    """

    retriable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        response_text: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.response_text = response_text or body
        self.retry_after = retry_after


class RateLimitedError(PushError):
    """Loki answered 429: flow control, retried unless ``retry_on_http_429`` is off."""

    retriable = True


class ServerError(PushError):
    """Loki answered 5xx: retried with backoff."""

    retriable = True


class PushConnectionError(PushError):
    """The request did not complete (refused, reset, timeout): retried with backoff."""

    retriable = True


class ClientRequestError(PushError):
    """Loki rejected the request with a 4xx other than 429: never retried."""

    retriable = False


class ClosedError(MinilogError):
    """The object was used after it was closed."""


class BrokenError(ClosedError):
    """The object cannot be used any more: a task it relies on died of a bug.

    A ``ClosedError``, so code that handles a closed writer handles a broken one.
    """


class WouldBlockError(MinilogError):
    """A ``*_nowait`` call would have had to wait (for instance, the queue is full)."""


class RuleError(ConfigError):
    """A ``rule`` block Alloy would refuse to load.

    ``field`` names the offending attribute (``action``, ``regex``, ...); ``offset`` is
    the character offset inside ``regex`` for regex syntax errors. The config runtime
    turns both into a positioned diagnostic.
    """

    def __init__(self, message: str, field: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.offset = offset
        #: Position of the rule in the list given to ``compile_rules`` (set there).
        self.index: int | None = None

    def __str__(self) -> str:
        return self.message


class StageError(MinilogError):
    """A ``loki.process`` stage was configured with invalid arguments.

    ``stage_name`` is the block name (``stage.json``); ``message`` says what is wrong;
    ``path`` locates the offending argument inside the block when known: an attribute
    name, then map keys or list indexes inside its value (``("values", "bad name")``),
    with nested blocks as a name and an index (``("rule", 1, "limit")``).
    """

    def __init__(
        self, message: str, stage_name: str, path: tuple[str | int, ...] = ()
    ) -> None:
        super().__init__(f"{stage_name}: {message}")
        self.message = message
        self.stage_name = stage_name
        self.path = path


class Re2Error(MinilogError, ValueError):
    """An invalid (or, for Python, unsupported) RE2 pattern.

    ``offset`` is the 0-based character offset inside the user's pattern where the
    offending construct starts; the config runtime turns it into a diagnostic.
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message, offset)
        self.message = message
        self.offset = offset

    def __str__(self) -> str:
        return f"{self.message} (at offset {self.offset})"


class EscapeError(MinilogError, ValueError):
    """A bad escape in a Go string literal (``strconv.UnquoteChar``'s cases).

    ``kind``: ``unterminated`` (the text ended), ``unknown`` (no such escape),
    ``illegal`` (a character that is not a digit of the escape), ``code_point`` (not
    a Unicode code point, or a byte escape above 255). ``char`` is the offending
    character, ``letter`` the one after the backslash, ``resume`` where a lexer that
    goes on after the error resumes.
    """

    def __init__(self, kind: str, char: str, letter: str, resume: int) -> None:
        super().__init__(f"invalid escape \\{letter}")
        self.kind = kind
        self.char = char
        self.letter = letter
        self.resume = resume


class BodyTooLargeError(DecodeError):
    """A body, or the length its snappy header declares, exceeds the allowed maximum."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message size too large than max ({size} vs {limit})")
        self.size = size
        self.limit = limit


class RequestRefused(MinilogError):
    """A push request refused with an error answer (Go ``http.Error`` style: the
    message plus a newline). Raised while reading and checking a request; the receiver
    answers with it and goes on.

    ``close`` ends the connection after the answer: the body was not read.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        close: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = headers


class BenchError(MinilogError):
    """``minilog bench`` cannot set up or go on; the message says what to do."""
