"""Go ``time.Parse`` for ``stage.timestamp``: each layout compiled into one regex.

Owns the translation of Go layouts (``2006-01-02T15:04:05Z07:00``), the named ones Alloy
accepts (``RFC3339``, ``RFC3339Nano``, ``ANSIC``, ...) and Alloy's ``Unix``, ``UnixMs``,
``UnixUs``, ``UnixNs`` into parsers returning Unix nanoseconds. Pure: the current time
is a parameter, used only by layouts without a year.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

__all__ = ["NAMED_LAYOUTS", "TimestampParser", "compile_format", "days_from_civil"]

#: (value, now_ns) -> Unix nanoseconds, or None when the value does not parse.
TimestampParser = Callable[[str, int], "int | None"]

#: The Go layout constants Alloy's ``convertDateLayout`` accepts by name.
NAMED_LAYOUTS: Final[dict[str, str]] = {
    "ANSIC": "Mon Jan _2 15:04:05 2006",
    "UnixDate": "Mon Jan _2 15:04:05 MST 2006",
    "RubyDate": "Mon Jan 02 15:04:05 -0700 2006",
    "RFC822": "02 Jan 06 15:04 MST",
    "RFC822Z": "02 Jan 06 15:04 -0700",
    "RFC850": "Monday, 02-Jan-06 15:04:05 MST",
    "RFC1123": "Mon, 02 Jan 2006 15:04:05 MST",
    "RFC1123Z": "Mon, 02 Jan 2006 15:04:05 -0700",
    "RFC3339": "2006-01-02T15:04:05Z07:00",
    "RFC3339Nano": "2006-01-02T15:04:05.999999999Z07:00",
}

_NS: Final = 1_000_000_000
_DAY_NS: Final = 86400 * _NS
_CACHE_SIZE: Final = 4096
_POW10: Final[tuple[int, ...]] = tuple(int(10**i) for i in range(10))
_INT64_MAX: Final = (1 << 63) - 1
_SIGNED_INT: Final = re.compile(r"[+-]?[0-9]+\Z")

_MONTHS: Final = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
_DAYS: Final = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
]
_MONTH_BY_NAME: Final = {name: i + 1 for i, name in enumerate(_MONTHS)} | {
    name[:3]: i + 1 for i, name in enumerate(_MONTHS)
}

# Layout chunks in the order Go's nextStdChunk tries them at one position: (text, kind).
_CHUNKS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "J": (("January", "long_month"), ("Jan", "month")),
    "M": (("Monday", "long_weekday"), ("Mon", "weekday"), ("MST", "tz_name")),
    "0": (
        ("01", "zero_month"),
        ("02", "zero_day"),
        ("03", "zero_hour12"),
        ("04", "zero_minute"),
        ("05", "zero_second"),
        ("06", "year2"),
        ("002", "zero_yday"),
    ),
    "1": (("15", "hour"), ("1", "num_month")),
    "2": (("2006", "year4"), ("2", "day")),
    "_": (("__2", "under_yday"), ("_2", "under_day")),
    "3": (("3", "hour12"),),
    "4": (("4", "minute"),),
    "5": (("5", "second"),),
    "P": (("PM", "PM"),),
    "p": (("pm", "pm"),),
    "-": (
        ("-070000", "numtz_hhmmss"),
        ("-07:00:00", "numtz_hh:mm:ss"),
        ("-0700", "numtz_hhmm"),
        ("-07:00", "numtz_hh:mm"),
        ("-07", "numtz_hh"),
    ),
    "Z": (
        ("Z070000", "isotz_hhmmss"),
        ("Z07:00:00", "isotz_hh:mm:ss"),
        ("Z0700", "isotz_hhmm"),
        ("Z07:00", "isotz_hh:mm"),
        ("Z07", "isotz_hh"),
    ),
}

_NUM_TZ: Final = {
    "hhmmss": r"[0-9]{6}",
    "hh:mm:ss": r"[0-9]{2}:[0-9]{2}:[0-9]{2}",
    "hhmm": r"[0-9]{4}",
    "hh:mm": r"[0-9]{2}:[0-9]{2}",
    "hh": r"[0-9]{2}",
}

# The regex each value-bearing chunk matches, as Go's parser consumes it.
_PATTERNS: Final = {
    "long_month": "(?i:" + "|".join(_MONTHS) + ")",
    "month": "(?i:" + "|".join(m[:3] for m in _MONTHS) + ")",
    "long_weekday": "(?i:" + "|".join(_DAYS) + ")",
    "weekday": "(?i:" + "|".join(d[:3] for d in _DAYS) + ")",
    "tz_name": r"GMT[+-][0-9]{1,2}|[A-Z]{3,5}|ChST|MeST",
    "zero_month": "[0-9]{2}",
    "num_month": "[0-9]{1,2}",
    "zero_day": "[0-9]{2}",
    "day": "[0-9]{1,2}",
    "under_day": " ?[0-9]{1,2}",
    "zero_yday": "[0-9]{3}",
    "under_yday": " {0,2}[0-9]{1,3}",
    "hour": "[0-9]{1,2}",
    "zero_hour12": "[0-9]{2}",
    "hour12": "[0-9]{1,2}",
    "zero_minute": "[0-9]{2}",
    "minute": "[0-9]{1,2}",
    "zero_second": "[0-9]{2}",
    "second": "[0-9]{1,2}",
    "year4": "[0-9]{4}",
    "year2": "[0-9]{2}",
    "PM": "AM|PM",
    "pm": "am|pm",
}


def _tokenize(layout: str) -> list[tuple[str, str]]:
    """Split a Go layout into ("lit", text) and (kind, text) chunks, as nextStdChunk."""
    out: list[tuple[str, str]] = []
    lit: list[str] = []
    i, n = 0, len(layout)
    while i < n:
        c = layout[i]
        found: tuple[str, str] | None = None
        if c == "_" and layout.startswith("_2006", i):
            # Go reads "_2006" as a literal underscore followed by the year.
            lit.append("_")
            found = ("2006", "year4")
        elif c in ".," and i + 1 < n and layout[i + 1] in "09":
            digit = layout[i + 1]
            j = i + 1
            while j < n and layout[j] == digit:
                j += 1
            if not (j < n and layout[j].isdigit()):
                found = (layout[i:j], "frac0" if digit == "0" else "frac9")
        else:
            for text, kind in _CHUNKS.get(c, ()):
                if layout.startswith(text, i):
                    found = (text, kind)
                    break
        if found is None:
            lit.append(c)
            i += 1
            continue
        if lit:
            out.append(("lit", "".join(lit)))
            lit = []
        out.append((found[1], found[0]))
        i += len(found[0])
    if lit:
        out.append(("lit", "".join(lit)))
    return out


def _literal_pattern(text: str) -> str:
    # Go's skip(): a run of spaces in the layout matches a run of spaces in the value.
    return "".join(
        " +" if part.startswith(" ") else re.escape(part)
        for part in re.split(r"( +)", text)
        if part
    )


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_in(month: int, year: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _civil_from_ns(now_ns: int) -> tuple[int, int]:
    """(year, month) of a Unix time in UTC."""
    dt = datetime(1970, 1, 1) + timedelta(microseconds=now_ns // 1000)
    return dt.year, dt.month


def _frac_ns(digits: str) -> int:
    # Go's parseNanoseconds keeps at most nine digits.
    digits = digits[:9]
    return int(digits) * _POW10[9 - len(digits)]


def _tz_offset(text: str) -> int | None:
    """Seconds east of UTC for ``Z``, ``+hh``, ``+hhmm``, ``+hh:mm``, ..."""
    if text == "Z":
        return 0
    digits = text[1:].replace(":", "")
    hh, mm, ss = int(digits[0:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    if hh > 24 or mm > 60 or ss > 60:
        return None
    offset = (hh * 60 + mm) * 60 + ss
    return -offset if text[0] == "-" else offset


class _LayoutParser:
    """One Go layout compiled to a regex plus the meaning of each of its groups."""

    __slots__ = (
        "_cache",
        "_fields",
        "_frac",
        "_key",
        "_location",
        "_regex",
        "_yearless",
    )

    def __init__(self, layout: str, location: ZoneInfo | None, yearless: bool) -> None:
        parts: list[str] = []
        fields: list[str] = []
        chunks = _tokenize(layout)
        for idx, (kind, text) in enumerate(chunks):
            if kind == "lit":
                parts.append(_literal_pattern(text))
                continue
            if kind in ("frac0", "frac9"):
                width = len(text) - 1
                body = (
                    f"[.,]([0-9]{{{width}}})"
                    if kind == "frac0"
                    else r"(?:[.,]([0-9]+))?"
                )
                parts.append(body)
                fields.append("frac")
                continue
            if kind.startswith(("numtz_", "isotz_")):
                shape = kind.split("_", 1)[1]
                body = f"[+-]{_NUM_TZ[shape]}"
                if kind.startswith("isotz_"):
                    body = "Z|" + body
                parts.append(f"({body})")
                fields.append("tz")
                continue
            parts.append(f"({_PATTERNS[kind]})")
            fields.append(kind)
            if kind in ("second", "zero_second"):
                following = chunks[idx + 1][0] if idx + 1 < len(chunks) else ""
                if following not in ("frac0", "frac9"):
                    # Go accepts a fraction after the seconds even when the layout has
                    # none.
                    parts.append(r"(?:[.,]([0-9]+))?")
                    fields.append("frac")
        self._regex = re.compile("".join(parts))
        self._fields = tuple(fields)
        self._location = location
        self._yearless = yearless
        self._frac = tuple(i for i, f in enumerate(fields) if f == "frac")
        # Unix seconds (or None: out of range) by value without its fraction.
        self._cache: dict[object, int | None] = {}

    def __call__(self, value: str, now_ns: int) -> int | None:
        m = self._regex.fullmatch(value)
        if m is None:
            return None
        key: object = value
        nsec = 0
        frac = self._frac
        if len(frac) == 1:
            # Keyed by the value without its fraction: one second's lines share it.
            start, end = m.span(frac[0] + 1)
            if start >= 0:
                key = value[:start] + value[end:]
                nsec = _frac_ns(value[start:end])
        else:
            for i in frac:
                text = m.group(i + 1)
                if text is not None:
                    nsec = _frac_ns(text)
        if self._yearless:
            key = (key, now_ns // _DAY_NS)
        cache = self._cache
        try:
            seconds = cache[key]
        except KeyError:
            seconds = self._seconds(m.groups(), now_ns)
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[key] = seconds
        if seconds is None:
            return None
        return seconds * _NS + nsec

    def _seconds(self, groups: tuple[str | None, ...], now_ns: int) -> int | None:
        """Unix seconds of everything but the fraction, or None when out of range."""
        year, month, day, yday = 0, -1, -1, -1
        hour = minute = second = 0
        pm: bool | None = None
        offset: int | None = None
        zone_name = ""
        for kind, text in zip(self._fields, groups, strict=True):
            if text is None:
                continue
            if kind == "year4":
                year = int(text)
            elif kind == "year2":
                y = int(text)
                year = y + (1900 if y >= 69 else 2000)
            elif kind in ("zero_month", "num_month"):
                month = int(text)
                if not 1 <= month <= 12:
                    return None
            elif kind in ("month", "long_month"):
                month = _MONTH_BY_NAME[text.lower()]
            elif kind in ("zero_day", "day", "under_day"):
                day = int(text)
            elif kind in ("zero_yday", "under_yday"):
                yday = int(text)
            elif kind == "hour":
                hour = int(text)
                if hour > 23:
                    return None
            elif kind in ("hour12", "zero_hour12"):
                hour = int(text)
                if hour > 12:
                    return None
            elif kind in ("minute", "zero_minute"):
                minute = int(text)
                if minute > 59:
                    return None
            elif kind in ("second", "zero_second"):
                second = int(text)
                if second > 59:
                    return None
            elif kind in ("PM", "pm"):
                pm = text in ("PM", "pm")
            elif kind == "tz":
                offset = _tz_offset(text)
                if offset is None:
                    return None
            elif kind == "tz_name":
                zone_name = text
        if pm is True and hour < 12:
            hour += 12
        elif pm is False and hour == 12:
            hour = 0
        if yday >= 0:
            if month >= 0 or day >= 0:
                return None  # mixing day-of-year with a date: keep it simple, refuse
            if not 1 <= yday <= (366 if _days_in(2, year) == 29 else 365):
                return None
            days = days_from_civil(year, 1, 1) + yday - 1
        else:
            month = 1 if month < 0 else month
            day = 1 if day < 0 else day
            if not 1 <= day <= _days_in(month, year):
                return None
            if self._yearless:
                now_year, now_month = _civil_from_ns(now_ns)
                if month == 12 and now_month == 1:
                    year = now_year - 1
                elif month == 1 and now_month == 12:
                    year = now_year + 1
                else:
                    year = now_year
            # days_from_civil normalises Feb 29 moved into a common year to Mar 1, as
            # AddDate.
            days = days_from_civil(year, month, 1) + day - 1
        seconds = days * 86400 + hour * 3600 + minute * 60 + second
        if offset is None:
            offset = self._zone_offset(zone_name, seconds)
        return seconds - offset

    def _zone_offset(self, zone_name: str, wall_seconds: int) -> int:
        if zone_name.startswith("GMT") and len(zone_name) > 3:
            return int(zone_name[3:]) * 3600
        if zone_name in ("UTC", "GMT") or (self._location is None):
            # Go gives an unknown abbreviation a fabricated zone with offset zero.
            return 0
        try:
            local = datetime(1970, 1, 1) + timedelta(seconds=wall_seconds)
            aware = local.replace(tzinfo=self._location)
        except OverflowError:
            return 0
        if zone_name and aware.tzname() != zone_name:
            return 0
        delta = aware.utcoffset()
        return 0 if delta is None else int(delta.total_seconds())


def _parse_int64(text: str) -> int | None:
    # Anything longer than 20 characters overflows int64 (and int() caps digit counts).
    if len(text) > 20 or _SIGNED_INT.match(text) is None:
        return None
    value = int(text)
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


def _unix(value: str, _now_ns: int) -> int | None:
    if value.count(".") == 1:
        sec_text, frac_text = value.split(".")
        sec, frac = _parse_int64(sec_text), _parse_int64(frac_text)
        if sec is None or frac is None:
            return None
        # Alloy scales the fraction through a float64: int64(float64(frac) *
        # 10^(9-len)).
        return sec * _NS + int(float(frac) * 10.0 ** (9 - len(frac_text)))
    sec = _parse_int64(value)
    return None if sec is None else sec * _NS


def _scaled(unit_ns: int) -> TimestampParser:
    def parse(value: str, _now_ns: int) -> int | None:
        n = _parse_int64(value)
        return None if n is None else n * unit_ns

    return parse


_UNIX_FORMATS: Final[dict[str, TimestampParser]] = {
    "Unix": _unix,
    "UnixMs": _scaled(1_000_000),
    "UnixUs": _scaled(1_000),
    "UnixNs": _scaled(1),
}


def compile_format(fmt: str, location: ZoneInfo | None) -> TimestampParser:
    """A parser for one ``stage.timestamp`` format, as Alloy's ``convertDateLayout``.

    Named layouts ignore ``location`` (Alloy calls ``time.Parse`` for them); custom
    layouts are parsed in it; layouts without ``06``/``2006`` take the current year.
    """
    if fmt in _UNIX_FORMATS:
        return _UNIX_FORMATS[fmt]
    if fmt in NAMED_LAYOUTS:
        return _LayoutParser(NAMED_LAYOUTS[fmt], None, yearless=False)
    yearless = "06" not in fmt and "2006" not in fmt
    return _LayoutParser(fmt, location, yearless=yearless)
