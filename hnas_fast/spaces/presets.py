"""The named search spaces: DARTS (= StacNAS S1), StacNAS S2..S5 and the H-DAS stage-level op set."""

from __future__ import annotations

import re
from pathlib import Path

from hnas_fast.spaces.space import SearchSpace, load_space

__all__ = ["DARTS_PRIMITIVES", "SPACES", "get_space", "resolve_space"]

# DARTS's PRIMITIVES, in its order (genotypes and alpha columns follow it).
DARTS_PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

_S1_GROUPS = (
    ("max_pool_3x3", "avg_pool_3x3"),
    ("skip_connect",),
    ("sep_conv_3x3", "sep_conv_5x5"),
    ("dil_conv_3x3", "dil_conv_5x5"),
)

# Groups and key operators: StacNAS Appendix A gives S1, S3 and S5. It prints no table for S2 and S4;
# their groups follow design.md §3, and their key operators (S2: max_pool_3x3, S4: sep_conv_3x3) are our
# choice by the paper's "3×3 member" pattern, not a published setting.
SPACES: dict[str, SearchSpace] = {
    "darts": SearchSpace("darts", DARTS_PRIMITIVES, _S1_GROUPS),
    "s1": SearchSpace("s1", DARTS_PRIMITIVES, _S1_GROUPS),
    "s2": SearchSpace(
        "s2",
        ("none", "max_pool_3x3", "max_pool_5x5", "avg_pool_3x3", "avg_pool_5x5", "skip_connect",
         "sep_conv_3x3", "sep_conv_5x5"),
        (("skip_connect", "max_pool_3x3", "max_pool_5x5", "avg_pool_3x3", "avg_pool_5x5"),
         ("sep_conv_3x3", "sep_conv_5x5")),
        ("max_pool_3x3", "sep_conv_3x3"),
    ),
    "s3": SearchSpace(
        "s3",
        ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7",
         "dil_conv_3x3", "dil_conv_5x5"),
        (("max_pool_3x3",), ("skip_connect",), ("sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7"),
         ("dil_conv_3x3", "dil_conv_5x5")),
    ),
    "s4": SearchSpace(
        "s4",
        ("none", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"),
        (("skip_connect",), ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")),
        ("skip_connect", "sep_conv_3x3"),
    ),
    "s5": SearchSpace(
        "s5",
        ("none", "skip_connect", "sep_conv_3x3"),
        (("skip_connect",), ("sep_conv_3x3",)),
    ),
    # H-DAS (Rule 1): the stage-level edges between cells carry only parameter-free ops. The paper does
    # not group them; each is its own group.
    "hdas_stage": SearchSpace(
        "hdas_stage", ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "none")
    ),
}


def get_space(name: str | SearchSpace) -> SearchSpace:
    """The preset space called ``name`` (case-insensitive); a :class:`SearchSpace` passes through."""
    if isinstance(name, SearchSpace):
        return name
    if not isinstance(name, str):
        raise TypeError(f"space must be a name or a SearchSpace, got {type(name).__name__}")
    try:
        return SPACES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown search space {name!r}; known spaces: {', '.join(SPACES)}") from None


def resolve_space(spec: str | SearchSpace) -> SearchSpace:
    """A space from a name (``darts``, ``s1``..``s5``), ``NAME/stage1`` (StacNAS group keys),
    ``NAME/groupI`` (StacNAS stage 2 on group I), or a ``.json``/``.yaml`` file."""
    if isinstance(spec, SearchSpace):
        return spec
    if Path(spec).suffix.lower() in (".json", ".yaml", ".yml"):
        if not Path(spec).is_file():
            raise FileNotFoundError(f"search-space file not found: {spec}")
        return load_space(spec)
    base, _, view = spec.partition("/")
    space = get_space(base)
    if not view:
        return space
    if view == "stage1":
        return space.stage1()
    m = re.fullmatch(r"group(\d+)", view)
    if m:
        return space.subspace(int(m.group(1)))
    raise ValueError(f"unknown space view {view!r} in {spec!r}; use NAME/stage1 or NAME/groupI")
