"""Relabel cost per target: the seed config's two rules, and labelmap + labeldrop.

Runs ``RelabelRules.process`` over a realistic 15-label Docker Compose target (the
``__meta_docker_*`` set discovery builds for one container on one network), as
``discovery.relabel`` does on every refresh: median CPU time of several runs, one
process. Run from the repository root:
``PYTHONPATH=. python benchmarks/bench_relabel.py [--runs N] [--targets N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping

from minilog.relabel import RelabelRules, Rule, compile_rules

__all__ = ["RULE_SETS", "main", "make_target"]

_COMPOSE = "__meta_docker_container_label_com_docker_compose_"


def make_target(service: str) -> dict[str, str]:
    """The 15 labels Docker discovery gives a Compose container with one port."""
    return {
        "__address__": "172.18.0.5:8080",
        "__meta_docker_container_id": (
            "3f1c9a7e2b4d8c6a0e5f7b9d1c3a5e7f9b1d3c5a7e9f1b3d5c7a9e1f3b5d7c9a"
        ),
        "__meta_docker_container_name": f"/{service}",
        "__meta_docker_container_network_mode": "shop_default",
        _COMPOSE + "config_hash": (
            "9d2b7c4e1f8a3b6d0c5e2f9a4b7d1c8e3f6a0b5d2c9e4f7a1b8d3c6e0f5a2b9d"
        ),
        _COMPOSE + "container_number": "1",
        _COMPOSE + "oneoff": "False",
        _COMPOSE + "project": "shop",
        _COMPOSE + "service": service,
        _COMPOSE + "version": "2.29.7",
        "__meta_docker_network_id": "5e8a1c3f7b9d",
        "__meta_docker_network_ingress": "false",
        "__meta_docker_network_internal": "false",
        "__meta_docker_network_ip": "172.18.0.5",
        "__meta_docker_network_name": "shop_default",
    }


#: (name, rules): the seed config's ``discovery.relabel "logs"``, and a labelmap of the
#: Compose labels followed by a labeldrop of the network ones.
RULE_SETS: tuple[tuple[str, tuple[Rule, ...]], ...] = (
    (
        "seed: replace service + keep",
        (
            Rule(
                source_labels=("__meta_docker_container_name",),
                regex="/(.*)",
                target_label="service",
            ),
            Rule(
                source_labels=("service",),
                regex="(web-gateway|order-api|fulfillment-worker)",
                action="keep",
            ),
        ),
    ),
    (
        "labelmap compose_* + labeldrop network_*",
        (
            Rule(
                regex=_COMPOSE + "(project|service|container_number)",
                replacement="compose_$1",
                action="labelmap",
            ),
            Rule(regex="__meta_docker_network_.*", action="labeldrop"),
        ),
    ),
)


def _time_rules(
    rules: RelabelRules, target: Mapping[str, str], n: int, runs: int
) -> tuple[float, dict[str, str] | None]:
    """Median CPU seconds for ``n`` targets, and the result for one of them."""
    timings = []
    process = rules.process
    for _ in range(runs):
        start = time.process_time()
        for _ in range(n):
            process(target)
        timings.append(time.process_time() - start)
    return statistics.median(timings), process(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--targets", type=int, default=20_000)
    args = parser.parse_args()

    targets = {
        "order-api": make_target("order-api"),
        "postgres": make_target("postgres"),
    }
    print(
        f"{len(make_target('x'))}-label Docker target, {args.targets} targets per "
        f"run, median CPU time of {args.runs} runs\n"
    )
    print(f"{'rules':42s} {'target':20s} {'us/target':>10s} {'labels out':>11s}")
    for name, rules in RULE_SETS:
        for rule in rules:
            rule.validate()
        compiled = compile_rules(rules)
        for which, target in targets.items():
            seconds, result = _time_rules(compiled, target, args.targets, args.runs)
            out = "dropped" if result is None else str(len(result))
            print(
                f"{name:42s} {which:20s} {seconds / args.targets * 1e6:10.2f} "
                f"{out:>11s}"
            )


if __name__ == "__main__":
    main()
