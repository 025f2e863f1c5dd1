"""Search spaces: candidate ops per edge and their StacNAS operator groups."""

from hnas_fast.spaces.presets import DARTS_PRIMITIVES, SPACES, get_space, resolve_space
from hnas_fast.spaces.space import NONE, SearchSpace, load_space

__all__ = ["DARTS_PRIMITIVES", "NONE", "SPACES", "SearchSpace", "get_space", "load_space", "resolve_space"]
