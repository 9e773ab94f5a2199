"""Method registry: how the pretrained weights adapt (name -> Method class)."""

from __future__ import annotations

from domaintune.methods.base import Method
from domaintune.methods.full import FullFineTuning

METHODS: dict[str, type[Method]] = {FullFineTuning.name: FullFineTuning}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]()
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None


__all__ = ["METHODS", "Method", "get_method"]
