"""Behaviour the ``loki.process`` docs leave open, as Alloy v1.18's source has it.

Table-driven like ``test_alloy_docs``: each case's facts come from Alloy's stage code
and its tests (``internal/component/loki/process/stages/*_test.go``), go-logfmt's
decoder and Loki's pattern matcher, written here as Alloy configurations.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from process_helpers import LABELS, NOW, Case, In, Out, S, Step, ns, run_case

from minilog.errors import ConfigError, StageError

MS = 1_000_000
P1 = NOW  # the partial lines' time
CRI_TS = "2019-05-07T18:57:50.904275087+00:00"
CRI_TS2 = "2019-05-07T18:57:55.904275087+00:00"


def _cri(line: str, labels: dict[str, str], full: bool = False) -> In:
    ts = CRI_TS2 if full else CRI_TS
    return In(f"{ts} stdout {'F' if full else 'P'} {line}", labels)


def _one(config: str, *inputs: In, expect: tuple[Out, ...], **kw: object) -> dict:
    return {"config": config, "steps": (Step(send=inputs, expect=expect),), **kw}


def _stdout(labels: dict[str, str]) -> dict[str, str]:
    return {**labels, "stream": "stdout"}


V12 = {"label1": "val1", "label2": "val2"}
V1 = {"label1": "val1"}
V3 = {"label1": "val3"}
V4 = {"label1": "val4"}
BAR = {"foo": "bar"}
BAR2 = {"foo": "bar2"}
TS_STAGE = """stage.timestamp {{
    source = "time"
    format = "RFC3339Nano"
    {extra}
}}"""
T = "2019-10-01T01:02:03.400000000Z"
T_NS = ns(datetime(2019, 10, 1, 1, 2, 3, 400000, tzinfo=UTC))

CASES: list[Case] = [
    # ------------------------------------------------------------------ stage.cri
    Case(
        "cri/multi-line-content",
        **_one(
            "stage.cri {}",
            In("2019-01-01T01:00:00.000000001Z stderr F message\nmessage2"),
            expect=(Out("message\nmessage2", {**LABELS, "stream": "stderr"}),),
        ),
    ),
    Case(
        "cri/invalid-timestamp-keeps-the-entry-time",
        **_one(
            "stage.cri {}",
            In("3242 stderr F message"),
            expect=(Out("message", {**LABELS, "stream": "stderr"}, ts=NOW),),
        ),
    ),
    Case(
        "cri/not-cri-passes",
        **_one("stage.cri {}", In("i'm invalid!!!"), expect=(Out("i'm invalid!!!"),)),
    ),
    Case(
        "cri/flag-is-optional",
        **_one(
            "stage.cri {}",
            In("something stderr looks like it could be cri"),
            expect=(Out("looks like it could be cri", {**LABELS, "stream": "stderr"}),),
        ),
    ),
    Case(
        "cri/partial-lines-per-stream",
        **_one(
            "stage.cri {}",
            _cri("partial line 1 ", BAR),
            _cri("partial line 2 ", BAR2),
            _cri("log finished", BAR, full=True),
            _cri("another full log", BAR2, full=True),
            expect=(
                Out("partial line 1 log finished", _stdout(BAR)),
                Out("partial line 2 another full log", _stdout(BAR2)),
            ),
        ),
    ),
    Case(
        "cri/max-partial-lines-exceeded",
        **_one(
            "stage.cri {\n max_partial_lines = 3\n}",
            _cri("partial line 1 ", V12),
            _cri("partial line 2 ", V1),
            _cri("partial line 3 ", V12),
            _cri("partial line 4 ", V3),
            _cri("partial line 5 ", V4),
            _cri("log finished", V12, full=True),
            _cri("another full log", V3, full=True),
            _cri("yet an another full log", V4, full=True),
            expect=(
                Out("partial line 1 partial line 3 ", _stdout(V12)),
                Out("log finished", _stdout(V12)),
                Out("partial line 2 ", _stdout(V1)),
                Out("partial line 4 ", _stdout(V3)),
                Out("another full log", _stdout(V3)),
                Out("partial line 5 yet an another full log", _stdout(V4)),
            ),
            metrics=(("loki_process_cri_partial_lines_flushed_total", {}, 3.0),),
        ),
    ),
    Case(
        "cri/one-stream-joins-all-its-partials",
        **_one(
            "stage.cri {\n max_partial_lines = 3\n}",
            *(_cri(f"partial line {i} ", BAR) for i in range(1, 5)),
            _cri("log finished", BAR, full=True),
            _cri("another full log", BAR, full=True),
            expect=(
                Out(
                    "partial line 1 partial line 2 partial line 3 partial line 4 "
                    "log finished",
                    _stdout(BAR),
                ),
                Out("another full log", _stdout(BAR)),
            ),
            metrics=(("loki_process_cri_partial_lines_flushed_total", {}, 0.0),),
        ),
    ),
    Case(
        "cri/partial-line-truncation",
        **_one(
            "stage.cri {\n max_partial_line_size = 11\n"
            " max_partial_line_size_truncate = true\n}",
            _cri("partial line 1 ", BAR),
            _cri("partial", BAR2),
            _cri("log finished", BAR, full=True),
            _cri("full", BAR2, full=True),
            expect=(
                Out("partial lin", _stdout(BAR)),
                Out("partialfull", _stdout(BAR2)),
            ),
            metrics=(("loki_process_cri_lines_truncated_total", {}, 2.0),),
        ),
    ),
    Case(
        "cri/partial-kept-until-shutdown",
        config="stage.cri {}",
        steps=(Step(send=(_cri("half a line", BAR),)),),
        final=(Out("half a line", _stdout(BAR)),),
        note="Alloy loses partial lines at shutdown; minilog sends them.",
    ),
    # -------------------------------------------------------------- stage.pattern
    Case(
        "pattern/loki-distributor",
        **_one(
            'stage.pattern {\n pattern = "<_> msg=\\"<method> <path> (<status>) '
            '<duration>\\""\n}',
            In(
                "level=debug ts=2021-05-19T07:54:26.864644382Z caller=logging.go:66 "
                'msg="POST /loki/api/v1/push (204) 1.238734ms"'
            ),
            expect=(
                Out(
                    "level=debug ts=2021-05-19T07:54:26.864644382Z caller=logging.go:66 "
                    'msg="POST /loki/api/v1/push (204) 1.238734ms"',
                    extracted={
                        "method": "POST",
                        "path": "/loki/api/v1/push",
                        "status": "204",
                        "duration": "1.238734ms",
                    },
                ),
            ),
        ),
    ),
    Case(
        "pattern/a-missed-literal-takes-the-rest",
        **_one(
            'stage.pattern {\n pattern = "<path>?<_>"\n}',
            In("/api/plugins/status"),
            expect=(
                Out("/api/plugins/status", extracted={"path": "/api/plugins/status"}),
            ),
        ),
    ),
    Case(
        "pattern/leading-literal-must-start-the-line",
        **_one(
            'stage.pattern {\n pattern = "foo <x> bar"\n}',
            In("a foo b bar"),
            expect=(Out("a foo b bar", extracted={"x": None}),),
        ),
    ),
    # ------------------------------------------------------------- stage.truncate
    Case(
        "truncate/line",
        **_one(
            'stage.truncate {\n rule {\n  limit = "10B"\n }\n}',
            In("123456789012"),
            In("12345678901"[:10]),
            expect=(
                Out("1234567890", extracted={"truncated": "line"}),
                Out("1234567890", extracted={"truncated": None}),
            ),
            metrics=(("loki_process_truncated_fields_total", {"field": "line"}, 1.0),),
        ),
    ),
    Case(
        "truncate/line-with-suffix",
        **_one(
            'stage.truncate {\n rule {\n  limit = "10B"\n  suffix = "..."\n }\n}',
            In("12345678901"),
            expect=(Out("1234567..."),),
        ),
    ),
    Case(
        "truncate/labels",
        **_one(
            'stage.truncate {\n rule {\n  limit = "15B"\n  suffix = "[truncated]"\n'
            '  source_type = "label"\n }\n}',
            In(
                "12345678901",
                {
                    "app": "my-very-long-app-name",
                    "version": "1.0.0-experimental",
                    "env": "prod",
                },
            ),
            expect=(
                Out(
                    "12345678901",
                    {
                        "app": "my-v[truncated]",
                        "version": "1.0.[truncated]",
                        "env": "prod",
                    },
                    extracted={"truncated": "label"},
                ),
            ),
            metrics=(("loki_process_truncated_fields_total", {"field": "label"}, 2.0),),
        ),
    ),
    Case(
        "truncate/multiple-rules",
        **_one(
            """stage.truncate {
  rule {
    limit = "10B"
  }
  rule {
    limit       = "15B"
    source_type = "label"
    suffix      = "[truncated]"
    sources     = ["app"]
  }
  rule {
    limit       = "15B"
    source_type = "structured_metadata"
    suffix      = "<trunc>"
  }
  rule {
    limit       = "8B"
    source_type = "extracted"
    sources     = ["field2"]
  }
}""",
            In(
                "12345678901234",
                {
                    "app": "my-very-long-app-name",
                    "version": "1.0.0-experimental",
                    "field2": "this-is-a-very-long-field-value",
                },
                metadata=(
                    ("meta1", "my-very-long-metadata-value"),
                    ("meta2", "another long value"),
                ),
            ),
            expect=(
                Out(
                    "1234567890",
                    {"app": "my-v[truncated]", "version": "1.0.0-experimental"},
                    metadata=(
                        ("meta1", "my-very-<trunc>"),
                        ("meta2", "another <trunc>"),
                    ),
                    extracted={
                        "field2": "this-is-",
                        "truncated": "extracted,label,line,structured_metadata",
                    },
                ),
            ),
            metrics=(
                ("loki_process_truncated_fields_total", {"field": "line"}, 1.0),
                ("loki_process_truncated_fields_total", {"field": "label"}, 1.0),
                (
                    "loki_process_truncated_fields_total",
                    {"field": "structured_metadata"},
                    2.0,
                ),
                ("loki_process_truncated_fields_total", {"field": "extracted"}, 1.0),
            ),
        ),
        # The label seeds the extracted map, then leaves the label set.
        setup='stage.label_drop {\n values = ["field2"]\n}',
    ),
    # ----------------------------------------------------------------- stage.luhn
    Case(
        "luhn/cards",
        **_one(
            "stage.luhn {}",
            In("My credit card number is 3530111333300000."),
            In("Cards 4532015112830366 and 6011111111111117 are valid."),
            In("Valid: 4556737586899855, invalid: 1234."),
            In("Edge cases: 0, 00, 000, 1."),
            expect=(
                Out("My credit card number is **REDACTED**."),
                Out("Cards **REDACTED** and **REDACTED** are valid."),
                Out("Valid: **REDACTED**, invalid: 1234."),
                Out("Edge cases: 0, 00, 000, 1."),
            ),
        ),
    ),
    Case(
        "luhn/delimiters",
        **_one(
            'stage.luhn {\n delimiters = " -"\n}',
            In(
                "Cards 4532-0151-1283-0366 and 6011 1111 1111 1117 are valid and "
                "3530:1113:3330:0000 has unexpected delimiters."
            ),
            In("Card 4532-0151-1283-0367 is not valid."),
            In("Card 4532-0151-128 is too short."),
            expect=(
                Out(
                    "Cards **REDACTED** and **REDACTED** are valid and "
                    "3530:1113:3330:0000 has unexpected delimiters."
                ),
                Out("Card 4532-0151-1283-0367 is not valid."),
                Out("Card 4532-0151-128 is too short."),
            ),
        ),
    ),
    Case(
        "luhn/source-replaces-the-line",
        setup='stage.json {\n expressions = {card = ""}\n}',
        **_one(
            'stage.luhn {\n source = "card"\n min_length = 0\n replacement = ""\n}',
            In('{"card":"card 4556737586899855"}'),
            expect=(Out("card **REDACTED**"),),
        ),
        note="Alloy writes the result to the line even with source; a min_length "
        "below 1 is 13 and an empty replacement is **REDACTED**.",
    ),
    # ------------------------------------------------------------- stage.template
    Case(
        "template/alloy-pipeline",
        **_one(
            """stage.json {
    expressions = { "app" = "app", "level" = "level" }
}
stage.template {
    source = "app"
    template = "{{ .Value | ToUpper }} doki"
}
stage.template {
    source = "level"
    template = "{{ if eq .Value \\"WARN\\" }}{{ Replace .Value \\"WARN\\" \\"OK\\" -1 }}{{ else }}{{ .Value }}{{ end }}"
}
stage.template {
    source = "nonexistent"
    template = "TEST"
}
stage.labels {
    values = { "app" = "", "level" = "", "type" = "nonexistent" }
}""",
            In('{"app":"loki","level":"WARN","message":"x"}', {}),
            expect=(
                Out(
                    '{"app":"loki","level":"WARN","message":"x"}',
                    {"app": "LOKI doki", "level": "OK", "type": "TEST"},
                ),
            ),
        ),
    ),
    Case(
        "template/missing-key-and-functions",
        setup='stage.json {\n expressions = {message = "", level = "", v = ""}\n}',
        **_one(
            """stage.template {
    source   = "message"
    template = "{{.Value}} in module {{.module}}"
}
stage.template {
    source   = "level"
    template = "{{ Replace .Value \\"Warning\\" \\"warn\\" 1 }}"
}
stage.template {
    source   = "sum"
    template = "{{ add 7 3 }}"
}
stage.template {
    source   = "v"
    template = "{{ Replace .Value \\" \\" \\"_\\" -1 | ToLower }}"
}
stage.template {
    source   = "absent"
    template = "{{ .Value | ToLower }}"
}
stage.template {
    source   = "re"
    template = `{{ regexReplaceAll "( |Of)" "Lots Of Spaces" "_" }}`
}""",
            In(
                '{"message":"warn for app loki","level":"Warning","v":"Some Silly Value"}'
            ),
            expect=(
                Out(
                    '{"message":"warn for app loki","level":"Warning","v":"Some Silly Value"}',
                    extracted={
                        "message": "warn for app loki in module <no value>",
                        "level": "warn",
                        "sum": "10",
                        "v": "some_silly_value",
                        "absent": None,  # ToLower of a missing value fails: unchanged
                        "re": "Lots___Spaces",
                    },
                ),
            ),
        ),
    ),
    Case(
        "template/hash-of-a-value",
        setup='stage.json {\n expressions = {a = "", b = "", c = ""}\n}',
        **_one(
            """stage.template {
    source   = "a"
    template = "{{ Hash .Value \\"salt\\" }}"
}
stage.template {
    source   = "b"
    template = "{{ .Value | Hash \\"salt\\" }}"
}
stage.template {
    source   = "c"
    template = "{{ Sha2Hash .Value \\"salt\\" }}"
}""",
            In('{"a":"v","b":"v","c":"v"}'),
            expect=(
                Out(
                    '{"a":"v","b":"v","c":"v"}',
                    extracted={
                        "a": hashlib.sha3_256(b"vsalt").hexdigest(),
                        "b": hashlib.sha3_256(b"saltv").hexdigest(),
                        "c": hashlib.sha256(b"vsalt").hexdigest(),
                    },
                ),
            ),
        ),
    ),
    Case(
        "template/empty-result-deletes-the-key",
        **_one(
            """stage.template {
    source   = "app"
    template = "{{ if eq .Value \\"drop\\" }}{{ else }}{{ .Value }}{{ end }}"
}
stage.labels {
    values = { app = "" }
}""",
            In("x", {"app": "drop"}),
            In("y", {"app": "keep"}),
            # Deleted from the extracted map, app no longer sets the label (which
            # keeps its value).
            expect=(
                Out("x", {"app": "drop"}, extracted={"app": None}),
                Out("y", {"app": "keep"}, extracted={"app": "keep"}),
            ),
        ),
    ),
    # -------------------------------------------------------------- stage.replace
    Case(
        "replace/named-groups-get-the-replaced-value",
        **_one(
            """stage.replace {
    expression = "(?P<user>\\\\w+)@(?P<host>\\\\w+)"
    replace    = "{{ .Value | ToUpper }}"
}""",
            In("from ann@mail and bob@web"),
            expect=(
                Out(
                    "from ANN@MAIL and BOB@WEB",
                    extracted={"user": "ANN", "host": "MAIL"},
                ),
            ),
        ),
    ),
    Case(
        "replace/empty-replace-removes-the-group",
        **_one(
            'stage.replace {\n expression = "token=(\\\\S+)"\n}',
            In("a token=abc b"),
            expect=(Out("a token= b"),),
        ),
    ),
    # ------------------------------------------------------------ stage.timestamp
    Case(
        "timestamp/duplicates-are-fudged",
        setup='stage.json {\n expressions = {time = ""}\n}',
        **_one(
            TS_STAGE.format(extra=""),
            *(In(f'{{"time":"{T}","n":{i}}}', ts=S) for i in range(3)),
            expect=tuple(
                Out(f'{{"time":"{T}","n":{i}}}', ts=T_NS + i) for i in range(3)
            ),
        ),
    ),
    Case(
        "timestamp/duplicates-kept",
        setup='stage.json {\n expressions = {time = ""}\n}',
        **_one(
            TS_STAGE.format(extra='action_on_duplicate_timestamp = "keep"'),
            *(In(f'{{"time":"{T}","n":{i}}}', ts=S) for i in range(3)),
            expect=tuple(Out(f'{{"time":"{T}","n":{i}}}', ts=T_NS) for i in range(3)),
        ),
    ),
    Case(
        "timestamp/failure-fudges-from-the-last-given-time",
        setup='stage.json {\n expressions = {time = ""}\n}',
        **_one(
            TS_STAGE.format(extra=""),
            In(f'{{"time":"{T}"}}', ts=S),
            In("{}", ts=S),
            In(f'{{"time":"{T}","again":1}}', ts=S),
            In("not json", ts=S),
            expect=(
                Out(f'{{"time":"{T}"}}', ts=T_NS),
                Out("{}", ts=T_NS + 1),
                # Equal to the last parsed time: one more than the last given one.
                Out(f'{{"time":"{T}","again":1}}', ts=T_NS + 2),
                Out("not json", ts=T_NS + 3),
            ),
        ),
    ),
    Case(
        "timestamp/per-stream",
        setup='stage.json {\n expressions = {time = ""}\n}',
        **_one(
            TS_STAGE.format(extra=""),
            In(f'{{"time":"{T}"}}', {"filename": "/1.log"}, ts=S),
            In("{}", {"filename": "/2.log"}, ts=S),
            In("{}", {"filename": "/1.log"}, ts=S),
            expect=(
                Out(f'{{"time":"{T}"}}', {"filename": "/1.log"}, ts=T_NS),
                Out("{}", {"filename": "/2.log"}, ts=S),  # nothing known yet: kept
                Out("{}", {"filename": "/1.log"}, ts=T_NS + 1),
            ),
        ),
    ),
    # ------------------------------------------------------------ stage.multiline
    Case(
        "multiline/trim-newlines",
        config='stage.multiline {\n firstline = "^START"\n}',
        steps=(
            Step(send=(In("START line 1\r\n"), In("line 2\n"), In("line 3\r\n\n"))),
        ),
        final=(Out("START line 1\nline 2\nline 3"),),
    ),
    Case(
        "multiline/trim-newlines-off",
        config='stage.multiline {\n firstline = "^START"\n trim_newlines = false\n}',
        steps=(Step(send=(In("START line 1\r\n"), In("line 2\n"))),),
        final=(Out("START line 1\r\n\nline 2\n"),),
    ),
    Case(
        "multiline/idle-stream-is-forgotten",
        config='stage.multiline {\n firstline = "^START"\n max_wait_time = "1s"\n}',
        steps=(
            Step(send=(In("START a"), In("b"))),
            Step(at=1 * S, expect=(Out("START a\nb"),)),
            Step(at=2 * S, send=(In("late", ts=NOW + 2 * S),), expect=(Out("late"),)),
        ),
    ),
    Case(
        "multiline/max-lines-keeps-the-start-entry",
        config='stage.multiline {\n firstline = "^START"\n max_lines = 2\n}',
        steps=(
            Step(
                send=(In("START a", ts=NOW), In("b", ts=NOW + 1), In("c", ts=NOW + 2)),
                expect=(Out("START a\nb", ts=NOW),),
            ),
        ),
        final=(Out("c", ts=NOW),),
    ),
    # ---------------------------------------------------------------- stage.json
    Case(
        "json/regex-keys",
        **_one(
            'stage.json {\n regex = "^user_"\n}',
            In('{"user_id":7,"user_tags":["a"],"other":1}'),
            expect=(
                Out(
                    '{"user_id":7,"user_tags":["a"],"other":1}',
                    extracted={"user_id": 7, "user_tags": '["a"]', "other": None},
                ),
            ),
        ),
    ),
    Case(
        "json/functions-and-filters",
        **_one(
            """stage.json {
    expressions = {
        count  = "length(items)",
        first  = "items[0].sku",
        skus   = "items[*].sku",
        pricey = "items[?price > `10`].sku | [0]",
        ua     = "\\"request_User-Agent\\"",
    }
}""",
            In(
                '{"items":[{"sku":"a","price":5},{"sku":"b","price":20}],'
                '"request_User-Agent":"curl"}'
            ),
            expect=(
                Out(
                    '{"items":[{"sku":"a","price":5},{"sku":"b","price":20}],'
                    '"request_User-Agent":"curl"}',
                    extracted={
                        "count": 2,
                        "first": "a",
                        "skus": '["a","b"]',
                        "pricey": "b",
                        "ua": "curl",
                    },
                ),
            ),
        ),
    ),
    Case(
        "json/objects-marshalled-back-as-go-does",
        **_one(
            'stage.json {\n expressions = { o = "" }\n}',
            In('{"o":{"b":1.0,"a":[2.5,3.0],"h":"<x>"}}'),
            expect=(
                Out(
                    '{"o":{"b":1.0,"a":[2.5,3.0],"h":"<x>"}}',
                    extracted={"o": '{"a":[2.5,3],"b":1,"h":"\\u003cx\\u003e"}'},
                ),
            ),
        ),
        note="Go decoded the numbers as float64 and escapes HTML characters; Alloy's "
        "key order is random (jsoniter), minilog sorts.",
    ),
    # -------------------------------------------------------------- stage.logfmt
    Case(
        "logfmt/quoted-value-followed-by-a-quote",
        **_one(
            'stage.logfmt {\n mapping = { extra = "", after = "" }\n}',
            In('level=info extra="user=foo"" after=1'),
            expect=(
                Out(
                    'level=info extra="user=foo"" after=1',
                    extracted={"extra": "user=foo", "after": None},
                ),
            ),
        ),
    ),
    Case(
        "logfmt/quoted-value-runs-into-the-next-key",
        **_one(
            'stage.logfmt {\n mapping = { a = "", b = "" }\n}',
            In('a="x"b=y'),
            expect=(Out('a="x"b=y', extracted={"a": "x", "b": "y"}),),
        ),
    ),
    Case(
        "logfmt/escapes",
        **_one(
            'stage.logfmt {\n mapping = { a = "", b = "", c = "" }\n}',
            In('a="say \\"hi\\"\\u00e9" b="it\\\'s" c="bad \\q" z=1'),
            expect=(
                Out(
                    'a="say \\"hi\\"\\u00e9" b="it\\\'s" c="bad \\q" z=1',
                    extracted={"a": 'say "hi"\u00e9', "b": "it's", "c": None},
                ),
            ),
        ),
        note="go-logfmt accepts \\' and refuses an unknown escape (decoding stops).",
    ),
    # ---------------------------------------------------- stage.structured_metadata
    Case(
        "structured_metadata/replaces-a-name",
        setup='stage.json {\n expressions = {trace_id = ""}\n}',
        **_one(
            'stage.structured_metadata {\n values = { trace_id = "" }\n}',
            In('{"trace_id":"new"}', metadata=(("trace_id", "old"), ("other", "o"))),
            expect=(
                Out(
                    '{"trace_id":"new"}',
                    metadata=(("trace_id", "new"), ("other", "o")),
                ),
            ),
        ),
    ),
    Case(
        "structured_metadata/label-wins-over-its-extracted-copy",
        setup='stage.json {\n expressions = {app = ""}\n}',
        **_one(
            'stage.structured_metadata {\n values = { app = "" }\n}',
            In('{"app":"from-json"}', {"app": "from-label"}),
            expect=(Out('{"app":"from-json"}', {}, metadata=(("app", "from-label"),)),),
        ),
    ),
    # --------------------------------------------------------------- stage.docker
    Case(
        "docker/quirks-of-go-json",
        **_one(
            "stage.docker {}",
            In('{"LOG":"upper\\n","Stream":"stdout","time":null}'),
            In('{"log":"","stream":"stderr"}'),
            In('{"log":5}'),
            expect=(
                Out("upper\n", {**LABELS, "stream": "stdout"}, ts=NOW),
                Out('{"log":"","stream":"stderr"}'),
                Out('{"log":5}'),
            ),
        ),
        note="Keys match case-insensitively; an empty log is left alone; a wrong "
        "type fails the decode.",
    ),
    # ---------------------------------------------------------------- stage.limit
    Case(
        "limit/wait-keeps-order-across-batches",
        config="stage.limit {\n rate = 10\n burst = 2\n}",
        steps=(
            Step(send=(In("a"), In("b"), In("c")), expect=(Out("a"), Out("b"))),
            Step(at=50 * MS, send=(In("d"),)),
            Step(at=100 * MS, expect=(Out("c"),)),
            Step(at=200 * MS, expect=(Out("d"),)),
        ),
    ),
    Case(
        "limit/held-entries-are-sent-at-shutdown",
        config="stage.limit {\n rate = 1\n burst = 1\n}",
        steps=(Step(send=(In("a"), In("b")), expect=(Out("a"),)),),
        final=(Out("b"),),
        note="Alloy drops what waits when its pipeline stops.",
    ),
    # -------------------------------------------------------------- stage.metrics
    Case(
        "metrics/names-as-written",
        setup='stage.json {\n expressions = {n = ""}\n}',
        **_one(
            """stage.metrics {
    metric.counter {
        name   = "lines"
        source = "n"
        action = "inc"
    }
    metric.counter {
        name      = "all_add"
        match_all = true
        action    = "add"
    }
    metric.gauge {
        name   = "level"
        source = "n"
        action = "sub"
    }
    metric.histogram {
        name    = "sizes"
        source  = "n"
        buckets = []
    }
}""",
            In('{"n":"2"}'),
            In('{"n":"1.5s"}'),
            expect=(Out('{"n":"2"}'), Out('{"n":"1.5s"}')),
            metrics=(
                ("loki_process_custom_lines", LABELS, 2.0),
                ("loki_process_custom_all_add", LABELS, None),
                ("loki_process_custom_level", LABELS, -3.5),
                ("loki_process_custom_sizes_bucket", {**LABELS, "le": "2.5"}, 2.0),
                ("loki_process_custom_sizes_bucket", {**LABELS, "le": "1"}, 0.0),
            ),
        ),
        note="A counter is exposed under its name (no _total added); match_all with "
        "add and no count_entry_bytes adds nothing; empty buckets are Prometheus'.",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_source_case(case: Case) -> None:
    run_case(case)


@pytest.mark.parametrize(
    ("config", "message", "where"),
    [
        (
            'stage.json {\n source = ""\n expressions = {a = ""}\n}',
            "empty source",
            (4, 11),
        ),
        (
            'stage.regex {\n expression = "(?P<a>.)"\n source = ""\n}',
            "empty source",
            (5, 11),
        ),
        ('stage.pattern {\n pattern = "<a>"\n source = ""\n}', "empty source", (5, 11)),
        ('stage.luhn {\n source = ""\n}', "empty source", (4, 11)),
        ("stage.labels {}", 'missing required attribute "values"', (3, 1)),
        ("stage.static_labels {}", 'missing required attribute "values"', (3, 1)),
        ("stage.label_drop {}", 'missing required attribute "values"', (3, 1)),
        ("stage.truncate {}", 'missing required block "rule"', (3, 1)),
        (
            'stage.truncate {\n rule {\n  limit = "10B"\n  sources = ["a"]\n }\n}',
            "sources cannot be set",
            (6, 13),
        ),
        (
            'stage.truncate {\n rule {\n  limit = "3B"\n  suffix = "..."\n }\n}',
            "suffix length",
            (6, 12),
        ),
        ('stage.pattern {\n pattern = "<a><b>"\n}', "consecutive capture", (4, 12)),
        ('stage.pattern {\n pattern = "<_> x"\n}', "at least one capture", (4, 12)),
        (
            'stage.json {\n expressions = {\n  ok = "a",\n  bad = "a-b",\n }\n}',
            "JMES",
            (6, 3),
        ),
        (
            'stage.labels {\n values = {\n  ok = "",\n  "" = "x",\n }\n}',
            "invalid label name",
            (6, 3),
        ),
        (
            'stage.metrics {\n metric.histogram {\n  name = "h"\n  buckets = [1, 1]\n }\n}',
            "increasing order",
            (6, 17),
        ),
        (
            'stage.limit {\n rate = 1\n burst = 1\n by_label_name = "a"\n}',
            "drop must be true",
            (3, 1),
        ),
        (
            'stage.timestamp {\n source = "t"\n format = "RFC3339"\n'
            ' action_on_duplicate_timestamp = "drop"\n}',
            "duplicate timestamp",
            (6, 34),
        ),
        ("stage.cri {\n max_partial_lines = 0\n}", "max_partial_lines", (4, 22)),
        (
            'stage.template {\n source = "a"\n template = "{{ .a"\n}',
            "unclosed action",
            (5, 13),
        ),
    ],
)
def test_validation_as_alloy_and_where(
    config: str, message: str, where: tuple[int, int]
) -> None:
    """Alloy refuses these; minilog says so at the offending argument (inside a map or
    list when that is where the problem is)."""
    from process_helpers import compile_config

    with pytest.raises((ConfigError, StageError)) as info:
        compile_config(config)
    assert isinstance(info.value, ConfigError), info.value
    (diag,) = info.value.diagnostics
    assert message in diag.message
    assert (diag.line, diag.column) == where
