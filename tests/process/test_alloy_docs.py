"""Every example of Alloy v1.18's ``loki.process`` reference a Docker user can use.

One case per documented example (``docs/sources/reference/components/loki/
loki.process.md`` at v1.18.1; the doc line is in the id), in document order: the
configuration as documented, the input and the expected output taken from the
example's own text. Where the text is silent the expected values follow Alloy's source
(``internal/component/loki/process/stages``); where the text and the source disagree,
the source wins and the case says so in its note. ``setup`` stages only provide the
extracted values an example assumes. Not here: ``stage.geoip``,
``stage.eventlogmessage`` and ``stage.windowsevent`` (refused, see the last tests).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from process_helpers import (
    LABELS,
    NOW,
    Case,
    In,
    Out,
    S,
    Step,
    compile_config,
    ns,
    run_case,
)
from prometheus_client import CollectorRegistry

from minilog.agent.graph import build_graph, read_config
from minilog.errors import ConfigError
from minilog.model import LogEntry, StreamBatch

MS = 1_000_000


def _t(text: str) -> int:
    """Unix ns of an RFC 3339 time, computed with the standard library."""
    head, _, frac = text.rstrip("Z").partition(".")
    base = datetime.fromisoformat(head).replace(tzinfo=UTC)
    return ns(base) + int((frac + "000000000")[:9])


def _one(config: str, *inputs: In, expect: tuple[Out, ...], **kw: object) -> dict:
    return {"config": config, "steps": (Step(send=inputs, expect=expect),), **kw}


FLASK = [
    '[2023-01-18 17:41:21] "GET /hello HTTP/1.1" 200 -',
    "[2023-01-18 17:41:25] ERROR in app: Exception on /error [GET]",
    "Traceback (most recent call last):",
    '  File "/home/pallets/.pyenv/versions/3.8.5/lib/python3.8/site-packages/flask/'
    'app.py", line 2447, in wsgi_app',
    "    response = self.full_dispatch_request()",
    '  File "/home/pallets/src/deployment_tools/hello.py", line 10, in error',
    '    raise Exception("Sorry, this route always breaks")',
    "Exception: Sorry, this route always breaks",
    '[2023-01-18 17:42:24] "GET /error HTTP/1.1" 500 -',
    '[2023-01-18 17:42:29] "GET /hello HTTP/1.1" 200 -',
]
MATCH_LINES = [
    '{ "time":"2023-01-18T17:08:41+00:00", "app":"example1", "component": ["parser",'
    '"type"], "level" : "WARN", "message" : "app1 log line" }',
    '{ "time":"2023-01-18T17:08:42+00:00", "app":"example2", "component": ["parser",'
    '"type"], "level" : "ERROR", "message" : "example noisy error" }',
]
LUHN_LINE = (
    "time=2012-11-01T22:08:41+00:00 app=loki level=WARN duration=125 "
    'message="credit card approved {}" extra="user=example_name"'
)
CRI_LINE = "2019-01-01T01:00:00.000000001Z stderr P i'm a log message!"
TS_JSON = '{"timestamp":"2022-01-01T01:00:00.000000001Z"}'
DATE_PARTS = {
    "year": "2022",
    "month": "01",
    "day": "01",
    "hour": "01",
    "minute": "00",
    "second": "00",
    "nano": "000000001",
}
PATTERN_DATE = "<year>-<month>-<day>T<hour>:<minute>:<second>.<nano>Z"
METRICS_MATCH_ALL = """stage.metrics {
    metric.counter {
        name        = "log_lines_total"
        description = "total number of log lines"
        prefix      = "my_custom_tracking_"

        match_all         = true
        action            = "inc"
        max_idle_duration = "24h"
    }
}
stage.metrics {
    metric.counter {
        name        = "log_bytes_total"
        description = "total bytes of log lines"
        prefix      = "my_custom_tracking_"

        match_all         = true
        count_entry_bytes = true
        action            = "add"
        max_idle_duration = "24h"
    }
}"""
ACCESS = "11.11.11.11 - alloy [01/Jan/2023:00:00:01 +0200]"
REPLACE_MSG = '11.11.11.11 - \\"POST /loki/api/push/ HTTP/1.1\\" 200 932 \\"-\\" \\"Mozilla/5.0\\"'

CASES: list[Case] = [
    Case(
        "cri@132",
        **_one(
            "stage.cri {}",
            In("2019-04-30T02:12:41.8443515Z stdout F message"),
            expect=(
                Out(
                    "message",
                    {**LABELS, "stream": "stdout"},
                    ts=_t("2019-04-30T02:12:41.8443515Z"),
                    extracted={
                        "content": "message",
                        "stream": "stdout",
                        "time": "2019-04-30T02:12:41.8443515Z",
                        "flags": "F",
                    },
                ),
            ),
        ),
        note="The doc shows time without its Z; Alloy keeps the field as written.",
    ),
    Case(
        "decolorize@159",
        **_one(
            "stage.decolorize {}",
            In(
                "[2022-11-04 22:17:57.811] \x1b[0;32http\x1b[0m: GET /_health (0 ms) 204"
            ),
            In("\x1b[0;32mgreen\x1b[0m \x1b[0;31mred\x1b[0m"),
            expect=(
                Out("[2022-11-04 22:17:57.811] ttp: GET /_health (0 ms) 204"),
                Out("green red"),
            ),
        ),
        note="The doc's input lacks the 'm' of '\\033[0;32m': Alloy's ANSI pattern "
        "then takes the 'h' as the sequence's end (the doc prints 'http').",
    ),
    Case(
        "docker@182",
        **_one(
            "stage.docker {}",
            In(
                '{"log":"log message\\n","stream":"stderr",'
                '"time":"2019-04-30T02:12:41.8443515Z"}'
            ),
            expect=(
                Out(
                    "log message\n",
                    {**LABELS, "stream": "stderr"},
                    ts=_t("2019-04-30T02:12:41.8443515Z"),
                    extracted={
                        "output": "log message\n",
                        "stream": "stderr",
                        "timestamp": "2019-04-30T02:12:41.8443515Z",
                    },
                ),
            ),
        ),
    ),
    Case(
        "drop@236",
        **_one(
            """stage.drop {
    expression  = ".*debug.*"
    longer_than = "1KB"
}""",
            In("a short debug line"),
            In("debug " + "x" * 1100),
            In("y" * 1100),
            expect=(Out("a short debug line"), Out("y" * 1100)),
            metrics=(
                ("loki_process_dropped_lines_total", {"reason": "drop_stage"}, 1.0),
            ),
        ),
    ),
    Case(
        "drop@245",
        **_one(
            """stage.drop {
    older_than          = "24h"
    drop_counter_reason = "too old"
}

stage.drop {
    longer_than         = "8KB"
    drop_counter_reason = "too long"
}

stage.drop {
    source = "app"
    value  = "example"
}""",
            In("a day and a bit ago", ts=NOW - 25 * 3600 * S),
            In("z" * 9000),
            In("fresh and short"),
            In("from app example", labels={"app": "example"}),
            expect=(Out("fresh and short"),),
            metrics=(
                ("loki_process_dropped_lines_total", {"reason": "too old"}, 1.0),
                ("loki_process_dropped_lines_total", {"reason": "too long"}, 1.0),
                ("loki_process_dropped_lines_total", {"reason": "drop_stage"}, 1.0),
            ),
        ),
    ),
    Case(
        "json@518",
        **_one(
            """stage.json {
    expressions = {output = "log", extra = ""}
}

stage.json {
    source      = "extra"
    expressions = {username = "user"}
}""",
            In('{"log":"log message\\n","extra":"{\\"user\\":\\"alloy\\"}"}'),
            expect=(
                Out(
                    '{"log":"log message\\n","extra":"{\\"user\\":\\"alloy\\"}"}',
                    extracted={
                        "output": "log message\n",
                        "extra": '{"user":"alloy"}',
                        "username": "alloy",
                    },
                ),
            ),
        ),
    ),
    Case(
        "label_drop@568",
        **_one(
            """stage.label_drop {
    values = [ "kubernetes_node_name", "kubernetes_namespace" ]
}""",
            In(
                "x",
                {
                    "kubernetes_node_name": "n1",
                    "kubernetes_namespace": "ns",
                    "app": "a",
                },
            ),
            expect=(Out("x", {"app": "a"}),),
        ),
    ),
    Case(
        "label_keep@584",
        **_one(
            """stage.label_keep {
    values = [ "kubernetes_pod_name", "kubernetes_pod_container_name" ]
}""",
            In(
                "x",
                {
                    "kubernetes_pod_name": "p",
                    "kubernetes_pod_container_name": "c",
                    "node": "n",
                },
            ),
            expect=(
                Out(
                    "x",
                    {"kubernetes_pod_name": "p", "kubernetes_pod_container_name": "c"},
                ),
            ),
        ),
    ),
    Case(
        "labels@606",
        setup='stage.json {\n expressions = {env = "", username = ""}\n}',
        **_one(
            """stage.labels {
    values = {
      env  = "",         // Sets up an 'env' label, based on the 'env' extracted value.
      user = "username", // Sets up a 'user' label, based on the 'username' extracted value.
    }
}""",
            In('{"env":"prod","username":"ann"}'),
            expect=(
                Out(
                    '{"env":"prod","username":"ann"}',
                    {**LABELS, "env": "prod", "user": "ann"},
                ),
            ),
        ),
    ),
    Case(
        "labels@615",
        **_one(
            """stage.labels {
    source_type = "structured_metadata"
    values      = {
      env  = "",         // Sets up an 'env' label, based on the 'env' structured metadata value.
      user = "username", // Sets up a 'user' label, based on the 'username' structured metadata value.
    }
}

// Drop the converted structured metadata
stage.structured_metadata_drop {
    values = [ "env", "username" ]
}""",
            In("x", metadata=(("env", "prod"), ("username", "ann"), ("trace", "t1"))),
            expect=(
                Out(
                    "x",
                    {**LABELS, "env": "prod", "user": "ann"},
                    metadata=(("trace", "t1"),),
                ),
            ),
        ),
    ),
    Case(
        "limit@649",
        config="""stage.limit {
    rate  = 5
    burst = 10
}""",
        steps=(
            # drop defaults to false: the 11th and 12th lines wait for their tokens.
            Step(
                send=tuple(In(f"l{i}", ts=NOW + i) for i in range(12)),
                expect=tuple(Out(f"l{i}") for i in range(10)),
            ),
            Step(at=199 * MS),
            Step(at=200 * MS, expect=(Out("l10"),)),
            Step(at=400 * MS, expect=(Out("l11"),)),
        ),
    ),
    Case(
        "limit@663",
        **_one(
            """stage.limit {
    rate  = 10
    burst = 10
    drop  = true

    by_label_name = "namespace"
}""",
            *(In(f"a{i}", {"namespace": "a"}, ts=NOW + i) for i in range(12)),
            *(In(f"b{i}", {"namespace": "b"}, ts=NOW + i) for i in range(10)),
            *(In(f"x{i}", {"job": "x"}, ts=NOW + i) for i in range(12)),
            expect=(
                *(Out(f"a{i}", {"namespace": "a"}) for i in range(10)),
                *(Out(f"b{i}", {"namespace": "b"}) for i in range(10)),
                *(Out(f"x{i}", {"job": "x"}) for i in range(12)),
            ),
            metrics=(
                (
                    "loki_process_dropped_lines_total",
                    {"reason": "ratelimit_drop_stage"},
                    2.0,
                ),
                (
                    "loki_process_dropped_lines_by_label_total",
                    {"label_name": "namespace", "label_value": "a"},
                    2.0,
                ),
            ),
        ),
    ),
    Case(
        "logfmt@695",
        **_one(
            """stage.logfmt {
    mapping = { "extra" = "" }
}

stage.logfmt {
    mapping = { "username" = "user" }
    source  = "extra"
}""",
            In(
                "time=2012-11-01T22:08:41+00:00 app=loki level=WARN duration=125 "
                'message="this is a log line" extra="user=example_name"'
            ),
            expect=(
                Out(
                    "time=2012-11-01T22:08:41+00:00 app=loki level=WARN duration=125 "
                    'message="this is a log line" extra="user=example_name"',
                    extracted={
                        "extra": "user=example_name",
                        "username": "example_name",
                    },
                ),
            ),
        ),
    ),
    Case(
        "luhn@739",
        **_one(
            """stage.luhn {
    replacement = "**DELETED**"
}""",
            In(LUHN_LINE.format("4032032513548443")),
            expect=(Out(LUHN_LINE.format("**DELETED**")),),
        ),
        note="The doc's output also shows level=INFO: a typo, the stage changes only "
        "the number.",
    ),
    Case(
        "luhn@757",
        **_one(
            """stage.luhn {
    replacement = "**DELETED**"
    delimiters = "-"
}""",
            In(LUHN_LINE.format("4032-0325-1354-8443")),
            expect=(Out(LUHN_LINE.format("**DELETED**")),),
        ),
    ),
    Case(
        "match@798",
        config="""stage.json {
    expressions = { "appname" = "app" }
}

stage.labels {
    values = { "applbl" = "appname" }
}

stage.match {
    selector = "{applbl=\\"example1\\"}"

    stage.json {
        expressions = { "msg" = "message" }
    }
}

stage.match {
    selector = "{applbl=\\"qux\\"}"
    stage.json {
        expressions = { "msg" = "msg" }
    }
}

stage.match {
    selector = "{applbl=\\"example2\\"} |~ \\".*noisy error.*\\""
    action   = "drop"

    drop_counter_reason = "discard_noisy_errors"
}

stage.output {
    source = "msg"
}""",
        steps=(
            Step(
                send=(In(MATCH_LINES[0]), In(MATCH_LINES[1])),
                expect=(Out("app1 log line", {**LABELS, "applbl": "example1"}),),
            ),
        ),
        metrics=(
            (
                "loki_process_dropped_lines_total",
                {"reason": "discard_noisy_errors"},
                1.0,
            ),
        ),
    ),
    Case(
        "metrics@959",
        **_one(
            METRICS_MATCH_ALL,
            In("ab"),
            In("\u00e9"),
            expect=(Out("ab"), Out("\u00e9")),
            metrics=(
                ("my_custom_tracking_log_lines_total", LABELS, 2.0),
                ("my_custom_tracking_log_bytes_total", LABELS, 4.0),
            ),
        ),
    ),
    Case(
        "metrics@988",
        **_one(
            """stage.regex {
    expression = "^.* order_status=(?P<order_status>.*?) .*$"
}
stage.metrics {
    metric.counter {
        name        = "successful_orders_total"
        description = "successful orders"
        source      = "order_status"
        value       = "success"
        action      = "inc"
    }
}
stage.metrics {
    metric.counter {
        name        = "failed_orders_total"
        description = "failed orders"
        source      = "order_status"
        value       = "fail"
        action      = "inc"
    }
}""",
            In("2024-01-01 order_status=success id=1"),
            In("2024-01-01 order_status=fail id=2"),
            In("2024-01-01 order_status=success id=3"),
            expect=(
                Out("2024-01-01 order_status=success id=1"),
                Out("2024-01-01 order_status=fail id=2"),
                Out("2024-01-01 order_status=success id=3"),
            ),
            metrics=(
                ("loki_process_custom_successful_orders_total", LABELS, 2.0),
                ("loki_process_custom_failed_orders_total", LABELS, 1.0),
            ),
        ),
    ),
    Case(
        "metrics@1015",
        **_one(
            """stage.regex {
    expression = "^.* retries=(?P<retries>\\\\d+) .*$"
}
stage.metrics {
    metric.gauge {
        name        = "retries_total"
        description = "total_retries"
        source      = "retries"
        action      = "add"
    }
}""",
            In("call retries=3 done"),
            In("call retries=2 done"),
            expect=(Out("call retries=3 done"), Out("call retries=2 done")),
            metrics=(("loki_process_custom_retries_total", LABELS, 5.0),),
        ),
    ),
    Case(
        "metrics@1031",
        setup='stage.json {\n expressions = {response_time = ""}\n}',
        **_one(
            """stage.metrics {
    metric.histogram {
        name        = "http_response_time_seconds"
        description = "recorded response times"
        source      = "response_time"
        buckets     = [0.001,0.0025,0.005,0.010,0.025,0.050]
    }
}""",
            In('{"response_time":0.002}'),
            In('{"response_time":"0.03"}'),
            In('{"response_time":"100ms"}'),
            expect=(
                Out('{"response_time":0.002}'),
                Out('{"response_time":"0.03"}'),
                Out('{"response_time":"100ms"}'),
            ),
            metrics=(
                *tuple(
                    (
                        "loki_process_custom_http_response_time_seconds_bucket",
                        {**LABELS, "le": le},
                        count,
                    )
                    for le, count in (
                        ("0.001", 0.0),
                        ("0.0025", 1.0),
                        ("0.005", 1.0),
                        ("0.01", 1.0),
                        ("0.025", 1.0),
                        ("0.05", 2.0),
                        ("+Inf", 3.0),
                    )
                ),
                ("loki_process_custom_http_response_time_seconds_count", LABELS, 3.0),
            ),
        ),
    ),
    Case(
        "multiline@1064",
        config="""stage.multiline {
    firstline     = "^\\\\[\\\\d{4}-\\\\d{2}-\\\\d{2} \\\\d{1,2}:\\\\d{2}:\\\\d{2}\\\\]"
    max_wait_time = "10s"
}""",
        steps=(
            Step(
                send=tuple(In(line, ts=NOW + i) for i, line in enumerate(FLASK)),
                expect=(
                    Out(FLASK[0], ts=NOW),
                    Out("\n".join(FLASK[1:8]), ts=NOW + 1),
                    Out(FLASK[8], ts=NOW + 8),
                ),
            ),
            Step(at=9 * S),
            Step(at=10 * S, expect=(Out(FLASK[9], ts=NOW + 9),)),
        ),
        note="The doc shows this example as text; the traceback is shortened.",
    ),
    Case(
        "output@1107",
        **_one(
            """stage.json {
    expressions = { "user" = "user", "message" = "message" }
}

stage.labels {
    values = { "user" = "user" }
}

stage.output {
    source = "message"
}""",
            In('{"user": "John Doe", "message": "hello, world!"}'),
            expect=(
                Out(
                    "hello, world!",
                    {**LABELS, "user": "John Doe"},
                    extracted={"user": "John Doe", "message": "hello, world!"},
                ),
            ),
        ),
    ),
    Case(
        "pack@1158",
        **_one(
            """stage.pack {
    labels = ["env", "user_id"]
}""",
            In(
                "something went wrong",
                {"level": "error", "env": "dev", "user_id": "f8fas0r"},
                ts=NOW - 3600 * S,
            ),
            expect=(
                Out(
                    '{"env":"dev","user_id":"f8fas0r","_entry":"something went wrong"}',
                    {"level": "error"},
                    ts=NOW,  # ingest_timestamp defaults to true
                ),
            ),
        ),
    ),
    Case(
        "pattern@1205",
        **_one(
            """stage.pattern {
    pattern = "<time> <stream> <flags> <content>"
}""",
            In(CRI_LINE),
            expect=(
                Out(
                    CRI_LINE,
                    extracted={
                        "time": "2019-01-01T01:00:00.000000001Z",
                        "stream": "stderr",
                        "flags": "P",
                        "content": "i'm a log message!",
                    },
                ),
            ),
        ),
        note="The doc's content lacks the '!': the last capture takes the rest.",
    ),
    Case(
        "pattern@1222",
        **_one(
            f"""stage.json {{
    expressions = {{ time = "timestamp" }}
}}
stage.pattern {{
    pattern = "{PATTERN_DATE}"
    source  = "time"
}}""",
            In(TS_JSON),
            expect=(
                Out(
                    TS_JSON,
                    extracted={"time": "2022-01-01T01:00:00.000000001Z", **DATE_PARTS},
                ),
            ),
        ),
    ),
    Case(
        "pattern@1255",
        **_one(
            f"""stage.json {{
    expressions = {{ time = "timestamp" }}
}}
stage.pattern {{
    pattern            = "{PATTERN_DATE}"
    source             = "time"
    labels_from_groups = true   // Sets up a label for each field parsed from the pattern
}}""",
            In(TS_JSON),
            expect=(Out(TS_JSON, {**LABELS, **DATE_PARTS}, extracted=DATE_PARTS),),
        ),
    ),
    Case(
        "regex@1309",
        **_one(
            """stage.regex {
    expression = "^(?s)(?P<time>\\\\S+?) (?P<stream>stdout|stderr) (?P<flags>\\\\S+?) (?P<content>.*)$"
}""",
            In(CRI_LINE),
            expect=(
                Out(
                    CRI_LINE,
                    extracted={
                        "time": "2019-01-01T01:00:00.000000001Z",
                        "stream": "stderr",
                        "flags": "P",
                        "content": "i'm a log message!",
                    },
                ),
            ),
        ),
    ),
    Case(
        "regex@1326",
        **_one(
            """stage.json {
    expressions = { time = "timestamp" }
}
stage.regex {
    expression = "^(?P<year>\\\\d+)"
    source     = "time"
}""",
            In(TS_JSON),
            expect=(
                Out(
                    TS_JSON,
                    extracted={
                        "time": "2022-01-01T01:00:00.000000001Z",
                        "year": "2022",
                    },
                ),
            ),
        ),
    ),
    Case(
        "regex@1352",
        **_one(
            """stage.json {
    expressions = { time = "timestamp" }
}
stage.regex {
    expression = "^(?P<year>\\\\d+)"
    source = "time"
    labels_from_groups = true   // Sets up an 'year' label, based on the 'year' capture group's value.
}""",
            In(TS_JSON),
            expect=(
                Out(TS_JSON, {**LABELS, "year": "2022"}, extracted={"year": "2022"}),
            ),
        ),
    ),
    Case(
        "replace@1400",
        **_one(
            """stage.replace {
    expression = "password (\\\\S+)"
    replace    = "*****"
}""",
            In(
                "2023-01-01T01:00:00.000000001Z stderr P i'm a log message who has "
                "sensitive information with password xyz!"
            ),
            expect=(
                Out(
                    "2023-01-01T01:00:00.000000001Z stderr P i'm a log message who has "
                    "sensitive information with password *****"
                ),
            ),
        ),
        note="The doc's output keeps the '!': \\S+ takes it too, so Alloy replaces it.",
    ),
    Case(
        "replace@1419",
        **_one(
            """stage.json {
    expressions = { "level" = "", "msg" = "" }
}

stage.replace {
    expression = "\\\\S+ - \\"POST (\\\\S+) .*"
    source     = "msg"
    replace    = "redacted_url"
}""",
            In(
                '{"time":"2023-01-01T01:00:00.000000001Z", "level": "info", '
                f'"msg":"{REPLACE_MSG}"}}'
            ),
            expect=(
                Out(
                    '{"time":"2023-01-01T01:00:00.000000001Z", "level": "info", '
                    f'"msg":"{REPLACE_MSG}"}}',
                    extracted={
                        "level": "info",
                        "msg": '11.11.11.11 - "POST redacted_url HTTP/1.1" 200 932 '
                        '"-" "Mozilla/5.0"',
                    },
                ),
            ),
        ),
        note="The doc's JSON misses the quote closing msg (it would not parse).",
    ),
    Case(
        "replace@1455",
        **_one(
            """stage.replace {
    expression = "^(?P<ip>\\\\S+) (?P<identd>\\\\S+) (?P<user>\\\\S+) \\\\[(?P<timestamp>[\\\\w:/]+\\\\s[+\\\\-]\\\\d{4})\\\\]"
    replace    = "{{ .Value | ToUpper }}"
}""",
            In(ACCESS),
            expect=(
                Out(
                    "11.11.11.11 - ALLOY [01/JAN/2023:00:00:01 +0200]",
                    extracted={
                        "ip": "11.11.11.11",
                        "identd": "-",
                        "user": "ALLOY",
                        "timestamp": "01/JAN/2023:00:00:01 +0200",
                    },
                ),
            ),
        ),
        note="The doc's input user is 'alloy' and its output 'FRANK': a typo.",
    ),
    Case(
        "replace@1476",
        **_one(
            """stage.replace {
    expression = "status=(\\\\w+)"
    replace    = "{{ if eq .Value \\"200\\" }}{{ Replace .Value \\"200\\" \\"HttpStatusOk\\" -1 }}{{ else }}{{ .Value | ToUpper }}{{ end }}"
}""",
            In("status=200"),
            In("status=ok"),
            expect=(Out("status=HttpStatusOk"), Out("status=OK")),
        ),
        note="The first template of the doc's function list.",
    ),
    Case(
        "replace@1476b",
        **_one(
            """stage.replace {
    expression = "ip=(\\\\S+)"
    replace    = "*IP4*{{ .Value | Hash \\"salt\\" }}*"
}""",
            In("ip=10.0.0.1 ok"),
            expect=(
                Out(
                    "ip=*IP4*" + hashlib.sha3_256(b"salt10.0.0.1").hexdigest() + "* ok"
                ),
            ),
        ),
        note="The second template of the doc's function list: piped, the value is "
        "Hash's second argument, after the salt.",
    ),
    Case(
        "static_labels@1524",
        **_one(
            """stage.static_labels {
    values = {
      foo = "fooval",
      bar = "barval",
    }
}""",
            In("x"),
            expect=(Out("x", {**LABELS, "foo": "fooval", "bar": "barval"}),),
        ),
    ),
    Case(
        "structured_metadata@1548",
        setup='stage.json {\n expressions = {env = "", username = "", pod_uid = ""}\n}',
        **_one(
            """stage.structured_metadata {
    values = {
      env  = "",         // Sets up an 'env' property to structured metadata, based on the 'env' extracted value.
      user = "username", // Sets up a 'user' property to structured metadata, based on the 'username' extracted value.
    }
    regex = "pod_.*"   // Adds all extracted values starting with 'pod_' to structured metadata.
}""",
            In(
                '{"env":"prod","username":"ann","pod_uid":"u1"}',
                {**LABELS, "pod_name": "web-1"},
            ),
            expect=(
                Out(
                    '{"env":"prod","username":"ann","pod_uid":"u1"}',
                    LABELS,  # pod_name moved from the labels to the metadata
                    metadata=(
                        ("env", "prod"),
                        ("user", "ann"),
                        ("pod_uid", "u1"),
                        ("pod_name", "web-1"),
                    ),
                ),
            ),
        ),
    ),
    Case(
        "structured_metadata_drop@1568",
        **_one(
            """stage.structured_metadata_drop {
    values = [ "kubernetes_node_name", "kubernetes_namespace" ]
}""",
            In(
                "x",
                metadata=(
                    ("kubernetes_node_name", "n1"),
                    ("trace_id", "t1"),
                    ("kubernetes_namespace", "ns"),
                ),
            ),
            expect=(Out("x", metadata=(("trace_id", "t1"),)),),
        ),
    ),
    Case(
        "template@1606",
        **_one(
            """stage.template {
    source   = "new_key"
    template = "hello_world"
}""",
            In("x"),
            expect=(Out("x", extracted={"new_key": "hello_world"}),),
        ),
    ),
    Case(
        "template@1616",
        setup='stage.json {\n expressions = {app = ""}\n}',
        **_one(
            """stage.template {
    source   = "app"
    template = "{{ ToLower .Value }}_some_suffix"
}""",
            In('{"app":"LOKI"}'),
            expect=(Out('{"app":"LOKI"}', extracted={"app": "loki_some_suffix"}),),
        ),
    ),
    Case(
        "template@1626",
        setup='stage.json {\n expressions = {level = "", app = "", module = ""}\n}',
        **_one(
            """stage.template {
    source   = "output_msg"
    template = "{{ .level }} for app {{ ToUpper .app }} in module {{.module}}"
}""",
            In('{"level":"info","app":"loki","module":"ingester"}'),
            expect=(
                Out(
                    '{"level":"info","app":"loki","module":"ingester"}',
                    extracted={"output_msg": "info for app LOKI in module ingester"},
                ),
            ),
        ),
    ),
    Case(
        "template@1636",
        **_one(
            """stage.template {
    source   = "message"
    template = "{{.app }}: {{ .Entry }}"
}
stage.output {
    source = "message"
}""",
            In("started", {"app": "loki"}),
            expect=(Out("loki: started", {"app": "loki"}),),
        ),
    ),
    Case(
        "template@1656",
        setup='stage.json {\n expressions = {app = ""}\n}',
        **_one(
            """stage.template {
    source   = "out"
    template = "{{ ToLower .app }}"
}
stage.template {
    source   = "out"
    template = "{{ .app | ToUpper }}"
}""",
            In('{"app":"Loki"}'),
            expect=(Out('{"app":"Loki"}', extracted={"out": "LOKI"}),),
        ),
    ),
    Case(
        "template@1678",
        setup='stage.json {\n expressions = {output = ""}\n}',
        **_one(
            """stage.template {
    source   = "output"
    template = `{{ Replace .Value "loki" "Loki" 2 }}`
}""",
            In('{"output":"loki loki loki"}'),
            expect=(
                Out(
                    '{"output":"loki loki loki"}',
                    extracted={"output": "Loki Loki loki"},
                ),
            ),
        ),
    ),
    Case(
        "template@1694",
        setup='stage.json {\n expressions = {output = ""}\n}',
        **_one(
            """stage.template {
    source   = "output"
    template = `{{ Trim .Value ",. " }}`
}
stage.template {
    source   = "output"
    template = "{{ TrimSpace .Value }}"
}
stage.template {
    source   = "output"
    template = `{{ TrimPrefix .Value "--" }}`
}""",
            In('{"output":",. --hello world ,. "}'),
            expect=(
                Out(
                    '{"output":",. --hello world ,. "}',
                    extracted={"output": "hello world"},
                ),
            ),
        ),
    ),
    Case(
        "template@1718",
        setup='stage.json {\n expressions = {output = ""}\n}',
        **_one(
            """stage.template {
    source   = "output"
    template = `{{ regexReplaceAll "(a*)bc" .Value "${1}a" }}`
}
stage.template {
    source   = "output"
    template = `{{ regexReplaceAllLiteral "(ts=)" .Value "timestamp=" }}`
}""",
            In('{"output":"ts=abc ts=aabc"}'),
            expect=(
                Out(
                    '{"output":"ts=abc ts=aabc"}',
                    extracted={"output": "timestamp=aa timestamp=aaa"},
                ),
            ),
        ),
    ),
    Case(
        "template@1738",
        setup='stage.json {\n expressions = {output = ""}\n}',
        **_one(
            """stage.template {
    source   = "output"
    template = `{{ Hash .Value "salt" }}`
}
stage.template {
    source   = "output"
    template = `{{ Sha2Hash .Value "salt" }}`
}""",
            In('{"output":"4111-1111"}'),
            expect=(
                Out(
                    '{"output":"4111-1111"}',
                    extracted={
                        "output": hashlib.sha256(
                            (
                                hashlib.sha3_256(b"4111-1111salt").hexdigest() + "salt"
                            ).encode()
                        ).hexdigest()
                    },
                ),
            ),
        ),
        note="Hash(salt, input) hashes salt+input; here .Value is the first argument.",
    ),
    Case(
        "tenant@1767",
        **_one(
            """stage.tenant {
    value = "team-a"
}""",
            In("x"),
            expect=(Out("x", {**LABELS, "__tenant_id__": "team-a"}),),
        ),
    ),
    Case(
        "tenant@1775",
        **_one(
            """stage.json {
    expressions = { "customer_id" = "" }
}
stage.tenant {
    source = "customer_id"
}""",
            In('{"customer_id":"c-42"}'),
            expect=(
                Out('{"customer_id":"c-42"}', {**LABELS, "__tenant_id__": "c-42"}),
            ),
        ),
    ),
    Case(
        "tenant@1786",
        setup='stage.json {\n expressions = {k8s_namespace = ""}\n}',
        **_one(
            """stage.labels {
  values = {
    "namespace" = "k8s_namespace",
  }
}

stage.tenant {
    label = "namespace"
}""",
            In('{"k8s_namespace":"shop"}'),
            expect=(
                Out(
                    '{"k8s_namespace":"shop"}',
                    {**LABELS, "namespace": "shop", "__tenant_id__": "shop"},
                ),
            ),
        ),
    ),
    Case(
        "timestamp@1896",
        setup='stage.json {\n expressions = {time = ""}\n}',
        **_one(
            """stage.timestamp {
    source = "time"
    format = "RFC3339"
}""",
            In('{"time":"2024-12-20T09:14:58+02:00"}'),
            expect=(
                Out(
                    '{"time":"2024-12-20T09:14:58+02:00"}',
                    ts=_t("2024-12-20T07:14:58Z"),
                ),
            ),
        ),
    ),
    Case(
        "timestamp@1905",
        setup='stage.json {\n expressions = {time = ""}\n}',
        **_one(
            """stage.timestamp {
    source = "time"
    format = "2006-01-02T15:04:05,000-07:00"
}""",
            In('{"time":"2024-12-20T09:14:58,381+02:00"}'),
            expect=(
                Out(
                    '{"time":"2024-12-20T09:14:58,381+02:00"}',
                    ts=_t("2024-12-20T07:14:58.381Z"),
                ),
            ),
        ),
    ),
    Case(
        "truncate@1954",
        **_one(
            """loki.process "default" {
  forward_to = [loki.write.default.receiver]
  stage.truncate {
    rule {
      limit = "12B"
      suffix = "..."
    }

    rule {
      limit = "12B"
      suffix = "..."
      source_type = "label"
    }
  }
}""",
            In(
                "I'm a log message!",
                {"label1": "hi", "label2": "hello world"},
                metadata=(
                    ("metadata1", "here is some metadata"),
                    ("metadata2", "and here is some more"),
                ),
            ),
            expect=(
                Out(
                    "I'm a log...",
                    {"label1": "hi", "label2": "hello wor..."},
                    metadata=(
                        ("metadata1", "here is some metadata"),
                        ("metadata2", "and here is some more"),
                    ),
                    extracted={"truncated": "label,line"},
                ),
            ),
            metrics=(
                ("loki_process_truncated_fields_total", {"field": "line"}, 1.0),
                ("loki_process_truncated_fields_total", {"field": "label"}, 1.0),
            ),
        ),
        note="The doc says 'hello...': the limit (12 bytes) less the suffix keeps 9 "
        "bytes, 'hello wor'.",
    ),
    Case(
        "example@2100",
        **_one(
            """loki.process "local" {
  forward_to = [loki.write.onprem.receiver]

  stage.json {
      expressions = { "extracted_env" = "environment" }
  }

  stage.labels {
      values = { "env" = "extracted_env" }
  }
}""",
            In('{"environment":"production"}'),
            expect=(
                Out('{"environment":"production"}', {**LABELS, "env": "production"}),
            ),
        ),
    ),
]

#: The documented ``alloy`` examples (51 at v1.18 without geoip, eventlogmessage and
#: windowsevent), the multiline one shown as text, and the two templates of the
#: replace function list.
assert len(CASES) == 53


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_documented_example(case: Case) -> None:
    run_case(case)


def _as_component(case: Case) -> str:
    if case.config.lstrip().startswith("loki.process"):
        text = case.config
    else:
        text = (
            f'loki.process "doc" {{\n  forward_to = []\n{case.setup}\n{case.config}\n}}'
        )
    for name in ("default", "onprem"):
        if f"loki.write.{name}" in text:
            text += (
                f'\nloki.write "{name}" {{\n  endpoint {{\n'
                '    url = "http://127.0.0.1:3100/loki/api/v1/push"\n  }\n}\n'
            )
    return text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_documented_example_validates(case: Case) -> None:
    """What ``minilog validate`` checks: the whole config graph."""
    build_graph(read_config(text=_as_component(case)))


@pytest.mark.parametrize(
    ("stage", "reason"),
    [
        (
            'stage.geoip {\n source = "ip"\n db = "/db/GeoLite2-City.mmdb"\n'
            ' db_type = "city"\n}',
            "MaxMind",
        ),
        ('stage.eventlogmessage {\n source = "message"\n}', "Windows"),
        ('stage.windowsevent {\n source = "message"\n}', "Windows"),
    ],
)
def test_out_of_scope_stages_are_refused_at_their_block(
    stage: str, reason: str
) -> None:
    text = f'loki.process "p" {{\n  forward_to = []\n  {stage}\n}}'
    with pytest.raises(ConfigError) as info:
        build_graph(read_config(text=text))
    (diag,) = info.value.diagnostics
    assert (diag.line, diag.column) == (3, 3)
    assert reason in diag.message
    assert "not supported by minilog" in diag.message


def test_sampling_keeps_about_its_rate_and_counts_the_rest() -> None:
    """stage.sampling@1505: random by nature, so only what must hold is checked."""
    case = Case(
        "sampling@1505",
        """stage.sampling {
    rate = 0.25
    drop_counter_reason = "logs_sampling"
}""",
        steps=(),
    )
    registry = CollectorRegistry()
    pipeline = compile_config(case.config, registry=registry)
    entries = [LogEntry(NOW + i, f"l{i}") for i in range(2000)]
    out = pipeline.process(StreamBatch(dict(LABELS), entries), NOW)
    kept = sum(len(b.entries) for b in out)
    assert 300 < kept < 700  # 500 expected; outside this is ~1e-20 likely
    dropped = registry.get_sample_value(
        "loki_process_dropped_lines_total", {"reason": "logs_sampling"}
    )
    assert dropped == 2000 - kept
