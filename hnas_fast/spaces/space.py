"""A search space: the candidate ops of every mixed edge and their operator groups (StacNAS)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hnas_fast.registry import OPS

__all__ = ["NONE", "SearchSpace", "load_space"]

NONE = "none"


def _default_representative(group: Sequence[str]) -> str:
    # StacNAS keys a group by its 3×3 member (MaxPool 3×3, SepConv 3×3, DilConv 3×3).
    for op in group:
        if op.endswith("3x3"):
            return op
    return group[0]


@dataclass(frozen=True)
class SearchSpace:
    """The candidate ops of a supernet edge, grouped by similarity.

    Attributes:
        name: the space's name.
        ops: the candidate op names in edge order; ``"none"`` (the zero op) is usually among them.
        groups: the operator groups; they partition ``ops`` minus ``"none"``. Without groups given,
            every op is its own group.
        representatives: one op per group (the StacNAS "key operator"); by default the group's 3×3
            member, else its first.
    """

    name: str
    ops: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...] = ()
    representatives: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        ops = tuple(self.ops)
        object.__setattr__(self, "ops", ops)
        if not ops:
            raise ValueError(f"space {self.name!r}: no ops")
        unknown = [op for op in ops if op not in OPS]
        if unknown:
            raise ValueError(
                f"space {self.name!r}: unknown op(s) {unknown}; known ops: {', '.join(sorted(OPS))}"
            )
        dupes = sorted({op for op in ops if ops.count(op) > 1})
        if dupes:
            raise ValueError(f"space {self.name!r}: duplicate op(s) {dupes}")
        non_zero = [op for op in ops if op != NONE]
        groups = tuple(tuple(g) for g in self.groups) or tuple((op,) for op in non_zero)
        object.__setattr__(self, "groups", groups)
        grouped = [op for g in groups for op in g]
        if any(len(g) == 0 for g in groups):
            raise ValueError(f"space {self.name!r}: empty group")
        if NONE in grouped:
            raise ValueError(f"space {self.name!r}: 'none' must not be in a group")
        if sorted(grouped) != sorted(non_zero):
            missing = sorted(set(non_zero) - set(grouped))
            extra = sorted(set(grouped) - set(non_zero))
            repeated = sorted({op for op in grouped if grouped.count(op) > 1})
            raise ValueError(
                f"space {self.name!r}: groups must partition the non-none ops; "
                f"missing {missing}, not in ops {extra}, in several groups {repeated}"
            )
        reps = tuple(self.representatives) or tuple(_default_representative(g) for g in groups)
        object.__setattr__(self, "representatives", reps)
        if len(reps) != len(groups) or any(r not in g for r, g in zip(reps, groups, strict=False)):
            raise ValueError(
                f"space {self.name!r}: representatives {list(reps)} must name one member of each group "
                f"{[list(g) for g in groups]}"
            )

    @property
    def num_ops(self) -> int:
        """K, the number of candidates on every edge."""
        return len(self.ops)

    @property
    def has_none(self) -> bool:
        """Whether the zero op ``none`` is a candidate."""
        return NONE in self.ops

    def index(self, op: str) -> int:
        """The position of ``op`` in :attr:`ops`."""
        try:
            return self.ops.index(op)
        except ValueError:
            raise ValueError(f"op {op!r} is not in space {self.name!r} ({', '.join(self.ops)})") from None

    def group_of(self, op: str) -> int:
        """The index of the group that holds ``op``."""
        for i, g in enumerate(self.groups):
            if op in g:
                return i
        raise ValueError(f"op {op!r} is in no group of space {self.name!r}")

    def _restrict(self, name: str, members: set[str]) -> SearchSpace:
        # Keep this space's op order (and its `none`) so alpha columns line up with the parent space.
        ops = tuple(op for op in self.ops if op in members or op == NONE)
        return SearchSpace(name=name, ops=ops, groups=tuple((op,) for op in ops if op != NONE))

    def stage1(self) -> SearchSpace:
        """StacNAS stage 1: one representative per group, plus ``none``; each op its own group."""
        return self._restrict(f"{self.name}/stage1", set(self.representatives))

    def subspace(self, which: int | Sequence[str]) -> SearchSpace:
        """StacNAS stage 2: the members of group ``which`` (an index) or the listed ops, plus ``none``.

        The result keeps this space's op order; each member becomes its own group.
        """
        if isinstance(which, int):
            if not -len(self.groups) <= which < len(self.groups):
                raise IndexError(f"space {self.name!r} has {len(self.groups)} groups, no group {which}")
            members = set(self.groups[which])
            label = f"group{which % len(self.groups)}"
        else:
            if isinstance(which, str):
                which = [which]
            members = set(which)
            if not members:
                raise ValueError("subspace needs at least one op")
            for op in members:
                self.index(op)
            label = "+".join(op for op in self.ops if op in members)
        return self._restrict(f"{self.name}/{label}", members)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :func:`load_space` reads back."""
        return {
            "name": self.name,
            "ops": list(self.ops),
            "groups": [list(g) for g in self.groups],
            "representatives": list(self.representatives),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        """Build a space from ``{"name", "ops", "groups"?, "representatives"?}``."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a search space must be a mapping, got {type(d).__name__}")
        allowed = {"name", "ops", "groups", "representatives"}
        extra = sorted(set(d) - allowed)
        if extra:
            raise ValueError(f"unexpected search-space field(s) {extra}; allowed: {sorted(allowed)}")
        if "ops" not in d:
            raise ValueError("a search space needs an 'ops' list")
        ops = d["ops"]
        if isinstance(ops, str) or not isinstance(ops, Sequence):
            raise ValueError(f"'ops' must be a list of op names, got {ops!r}")
        return cls(
            name=str(d.get("name", "user")),
            ops=tuple(ops),
            groups=tuple(tuple(g) for g in d.get("groups") or ()),
            representatives=tuple(d.get("representatives") or ()),
        )


def load_space(path: str | os.PathLike[str]) -> SearchSpace:
    """Read a user space from a JSON or YAML file (``.json``, ``.yaml``, ``.yml``).

    The file holds ``{"name": ..., "ops": [...], "groups": [[...], ...]}``; ``groups`` and
    ``representatives`` are optional. Ops must be registered (see
    :func:`hnas_fast.registry.register_op`) before loading.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ValueError(f"{p}: a search-space file must end in .json, .yaml or .yml")
    text = p.read_text()
    if suffix == ".json":
        data = json.loads(text)
    else:
        import yaml  # only needed for YAML files

        data = yaml.safe_load(text)
    return SearchSpace.from_dict(data)
