"""Tests for ``minilog.process``: ``stage.metrics`` (counters, gauges and
histograms from entries)."""

from __future__ import annotations

from typing import Any

import pytest
from process_helpers import (
    LABELS,
    NOW,
    S,
    Stages,
    batch,
    lines_of,
    run,
    sample,
)
from prometheus_client import CollectorRegistry

from minilog.errors import StageError
from minilog.process import build_pipeline

# ---------------------------------------------------------------------------- metrics


def test_metrics_counters_per_label_set() -> None:
    registry = CollectorRegistry()
    pipeline = build_pipeline(
        [
            (
                "stage.metrics",
                {
                    "metric.counter": [
                        {"name": "log_lines_total", "match_all": True, "action": "inc"},
                        {
                            "name": "log_bytes_total",
                            "prefix": "my_",
                            "match_all": True,
                            "count_entry_bytes": True,
                            "action": "add",
                        },
                    ]
                },
            )
        ],
        registry=registry,
    )
    out = pipeline.process(batch("ab", "\u00e9"), NOW)
    pipeline.process(batch("xyz", labels={"job": "other", "__tenant_id__": "t"}), NOW)
    assert lines_of(out) == ["ab", "\u00e9"]  # entries pass unchanged
    name = "loki_process_custom_log_lines_total"
    assert sample(registry, name, **LABELS) == 2
    assert sample(registry, name, job="other") == 1  # internal labels left out
    assert sample(registry, "my_log_bytes_total", **LABELS) == 4  # bytes, not chars


def test_metrics_from_extracted_values() -> None:
    registry = CollectorRegistry()
    stages: Stages = [
        ("stage.regex", {"expression": r"order_status=(?P<order_status>\w+)"}),
        ("stage.regex", {"expression": r"retries=(?P<retries>\S+)"}),
        ("stage.regex", {"expression": r"took=(?P<response_time>\S+)"}),
        (
            "stage.metrics",
            {
                "metric.counter": [
                    {
                        "name": "successful_orders_total",
                        "source": "order_status",
                        "value": "success",
                        "action": "inc",
                    }
                ],
                "metric.gauge": [{"name": "retries", "action": "add"}],
                "metric.histogram": [
                    {
                        "name": "response_time_seconds",
                        "source": "response_time",
                        "buckets": [0.001, 0.01, 1],
                    },
                ],
            },
        ),
    ]
    lines = [
        "order_status=success retries=2 took=0.5ms",
        "order_status=fail retries=1.5 took=0.2",
        "order_status=success took=2s",
        "retries=x took=nonsense",
    ]
    run(stages, *lines, registry=registry)
    p = "loki_process_custom_"
    assert sample(registry, p + "successful_orders_total", **LABELS) == 2
    assert sample(registry, p + "retries", **LABELS) == 3.5
    hist = p + "response_time_seconds"
    assert sample(registry, hist + "_count", **LABELS) == 3
    assert sample(registry, hist + "_sum", **LABELS) == pytest.approx(2.2005)
    assert sample(registry, hist + "_bucket", le="0.001", **LABELS) == 1
    assert sample(registry, hist + "_bucket", le="1", **LABELS) == 2  # Go's %g
    assert sample(registry, hist + "_bucket", le="+Inf", **LABELS) == 3


def test_metrics_gauge_actions_and_idle_series_expire() -> None:
    registry = CollectorRegistry()
    pipeline = build_pipeline(
        [
            ("stage.regex", {"expression": r"(?P<v>\d+)"}),
            (
                "stage.metrics",
                {
                    "metric.gauge": [
                        {"name": "last", "source": "v", "action": "set"},
                        {"name": "up_down", "source": "v", "action": "dec"},
                    ]
                },
            ),
        ],
        registry=registry,
    )
    pipeline.process(batch("7", "9"), NOW)
    assert sample(registry, "loki_process_custom_last", **LABELS) == 9
    assert sample(registry, "loki_process_custom_up_down", **LABELS) == -2
    pipeline.process(batch("1", labels={"job": "b"}), NOW + 299 * S)
    assert sample(registry, "loki_process_custom_last", **LABELS) == 9
    pipeline.process(batch("1", labels={"job": "b"}), NOW + 301 * S)
    assert sample(registry, "loki_process_custom_last", **LABELS) is None  # 5m idle
    assert sample(registry, "loki_process_custom_last", job="b") == 1


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ({"metric.counter": [{"name": "x", "action": "set"}]}, "action"),
        (
            {
                "metric.counter": [
                    {"name": "x", "action": "inc", "match_all": True, "value": "a"}
                ]
            },
            "either 'match_all' or a 'value'",
        ),
        (
            {
                "metric.counter": [
                    {"name": "x", "action": "inc", "count_entry_bytes": True}
                ]
            },
            "count_entry_bytes",
        ),
        ({"metric.histogram": [{"name": "x"}]}, "buckets"),
        (
            {
                "metric.gauge": [
                    {"name": "x", "action": "inc", "max_idle_duration": "500ms"}
                ]
            },
            "greater or equal than 1s",
        ),
        (
            {"metric.gauge": [{"name": "bad-name", "action": "inc"}]},
            "invalid metric name",
        ),
        (
            {
                "metric.gauge": [
                    {"name": "x", "action": "inc"},
                    {"name": "x", "action": "inc"},
                ]
            },
            "Duplicated",
        ),
        ({"metric.summary": [{"name": "x"}]}, "unsupported argument"),
        (
            {"metric.histogram": [{"name": "x", "buckets": [1, 0.5]}]},
            "increasing order",
        ),
        (
            {
                "metric.counter": [
                    {
                        "name": "x",
                        "action": "inc",
                        "match_all": True,
                        "count_entry_bytes": True,
                    }
                ]
            },
            "count_entry_bytes",
        ),
    ],
)
def test_metrics_validation(blocks: dict[str, Any], message: str) -> None:
    with pytest.raises(StageError, match=message):
        build_pipeline([("stage.metrics", blocks)])
