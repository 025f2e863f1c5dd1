"""Architecture search: genotypes, strategies (one-level, DARTS first/second order), presets, the runner.

Only the genotype module is imported eagerly (the supernet imports it); the other public names load on
first access, so ``import hnas_fast.search.genotype`` stays cheap and free of import cycles.
"""
from __future__ import annotations

import importlib
from typing import Any

from hnas_fast.search.genotype import (
    DARTS_V2,
    Genotype,
    derive_genotype,
    genotype_from_json,
    genotype_to_json,
    genotype_to_str,
    load_genotype,
    parse_genotype,
    validate_genotype,
)

_LAZY = {
    "strategy": ("NonFiniteLossError", "OneLevel", "STRATEGIES", "SearchStrategy", "TwoLevelFirstOrder",
                 "TwoLevelSecondOrder", "make_strategy"),
    "presets": ("PRESETS", "ConfigError", "SearchConfig", "config_from_dict", "load_config_file",
                "make_config"),
    "runner": ("SearchResult", "SearchRun", "atomic_torch_save", "load_checkpoint", "resolve_space",
               "run_search"),
}
_WHERE = {name: mod for mod, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"hnas_fast.search.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hnas_fast.search' has no attribute {name!r}")


__all__ = [
    "DARTS_V2", "Genotype", "derive_genotype", "genotype_from_json", "genotype_to_json", "genotype_to_str",
    "load_genotype", "parse_genotype", "validate_genotype", *_WHERE,
]
