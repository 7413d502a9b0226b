"""The public surface: what ``__all__`` promises is what the modules export."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import minilog


def test_top_level_all_is_complete() -> None:
    # ruff's RUF022 keeps it sorted; here: no duplicates, nothing missing.
    assert len(set(minilog.__all__)) == len(minilog.__all__)
    for name in minilog.__all__:
        assert hasattr(minilog, name), name


def _modules() -> list[str]:
    return ["minilog"] + [
        info.name
        for info in pkgutil.walk_packages(minilog.__path__, "minilog.")
        if not info.name.startswith("minilog._pb")
    ]


@pytest.mark.parametrize("module_name", _modules())
def test_every_module_declares_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, (list, tuple)), f"{module_name} has no __all__"
    for name in exported:
        assert hasattr(module, name), f"{module_name}.__all__ names missing {name!r}"


def test_errors_share_one_root() -> None:
    for name in minilog.__all__:
        obj = getattr(minilog, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, minilog.MinilogError), name
