"""Genotypes: what a search writes and a final network is built from.

Two kinds, each with its JSON/file I/O and validation, both below ``nn/`` so that supernets, final
networks, the search layer and viz/ read them without importing each other:

- :mod:`~hnas_fast.genotypes.cell`: DARTS's cell :data:`Genotype` (also StacNAS's result and each of
  Hc-DAS's stage-specific cells);
- :mod:`~hnas_fast.genotypes.macro`: Hs-DAS's :class:`MacroGenotype` (per stage a DAG over its cells and
  the output pair).
"""

from hnas_fast.genotypes.cell import (
    DARTS_V2,
    GENOTYPES,
    RANKINGS,
    STACNAS_CIFAR,
    Genotype,
    derive_genotype,
    genotype_from_json,
    genotype_to_json,
    genotype_to_str,
    load_genotype,
    parse_genotype,
    validate_genotype,
)
from hnas_fast.genotypes.macro import (
    STAGE_OPS,
    MacroGenotype,
    StageDAG,
    chain_macro_genotype,
    derive_macro_genotype,
    load_macro_genotype,
    macro_from_json,
    macro_to_json,
    remove_dead_cells,
    save_macro_genotype,
    validate_macro_genotype,
)

__all__ = [
    "DARTS_V2", "GENOTYPES", "RANKINGS", "STACNAS_CIFAR", "STAGE_OPS", "Genotype", "MacroGenotype",
    "StageDAG", "chain_macro_genotype", "derive_genotype", "derive_macro_genotype", "genotype_from_json",
    "genotype_to_json", "genotype_to_str", "load_genotype", "load_macro_genotype", "macro_from_json",
    "macro_to_json", "parse_genotype", "remove_dead_cells", "save_macro_genotype", "validate_genotype",
    "validate_macro_genotype",
]
