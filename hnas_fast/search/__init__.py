"""Architecture search: strategies, the one config, the one search loop, its stages and the pipelines.

``strategy`` (one-level, DARTS first/second order) → ``presets`` (the composed :class:`SearchConfig`) →
``stages`` (what is searched: DARTS cells, StacNAS's stage two, Hc-DAS stage cells, the Hs-DAS stage DAG)
→ ``runner`` (:class:`SearchRun`, the loop every stage and strategy runs on) → ``pipeline`` (StacNAS and
H-DAS as resumable sequences of runs). ``correlation`` is StacNAS's operator correlation and clustering.
Genotypes live below ``nn/`` in :mod:`hnas_fast.genotypes`.
"""

from hnas_fast.search.presets import (
    PRESETS,
    ConfigError,
    SearchConfig,
    config_from_dict,
    load_config_file,
    make_config,
)
from hnas_fast.search.runner import SearchResult, SearchRun, load_checkpoint, run_search
from hnas_fast.search.strategy import (
    STRATEGIES,
    NonFiniteLossError,
    OneLevel,
    SearchStrategy,
    TwoLevelFirstOrder,
    TwoLevelSecondOrder,
    make_strategy,
)

__all__ = [
    "PRESETS", "STRATEGIES", "ConfigError", "NonFiniteLossError", "OneLevel", "SearchConfig", "SearchResult",
    "SearchRun", "SearchStrategy", "TwoLevelFirstOrder", "TwoLevelSecondOrder", "config_from_dict",
    "load_checkpoint", "load_config_file", "make_config", "make_strategy", "run_search",
]
