"""Genotypes: the discrete cells derived from a supernet, their I/O, and the published presets.

A :data:`Genotype` is DARTS's namedtuple, so DARTS-family code can consume ours and vice versa. Each of
``normal``/``reduce`` lists two ``(op, input)`` pairs per intermediate node, where input 0 and 1 are the
cell inputs c_{k-2}, c_{k-1} and input ``j >= 2`` is intermediate node ``j - 2``.
"""

from __future__ import annotations

import ast
import json
import os
from collections import namedtuple
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from hnas_fast.registry import OPS
from hnas_fast.spaces import get_space

__all__ = [
    "DARTS_V2",
    "GENOTYPES",
    "RANKINGS",
    "STACNAS_CIFAR",
    "Genotype",
    "derive_genotype",
    "genotype_from_json",
    "genotype_to_json",
    "genotype_to_str",
    "load_genotype",
    "parse_genotype",
    "validate_genotype",
]

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

Ranking = Literal["weight", "logit"]
RANKINGS: tuple[str, ...] = ("weight", "logit")
_NONE = "none"

# The DARTS paper's CIFAR-10 cell (DARTS (second order), genotypes.py `DARTS_V2`).
DARTS_V2 = Genotype(
    normal=[
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("skip_connect", 0),
        ("skip_connect", 0), ("dil_conv_3x3", 2),
    ],
    normal_concat=range(2, 6),
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1),
        ("skip_connect", 2), ("max_pool_3x3", 1),
        ("max_pool_3x3", 0), ("skip_connect", 2),
        ("skip_connect", 2), ("max_pool_3x3", 1),
    ],
    reduce_concat=range(2, 6),
)

# StacNAS's CIFAR-10 cell, read off the paper's figure (no genotype file is published with it), so the
# pair order within a node is as the figure is read, which does not change the network.
STACNAS_CIFAR = Genotype(
    normal=[
        ("skip_connect", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 2), ("skip_connect", 0),
        ("sep_conv_3x3", 1), ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 2), ("sep_conv_3x3", 0),
    ],
    normal_concat=range(2, 6),
    reduce=[
        ("skip_connect", 1), ("max_pool_3x3", 0),
        ("dil_conv_5x5", 2), ("avg_pool_3x3", 0),
        ("dil_conv_5x5", 3), ("avg_pool_3x3", 0),
        ("dil_conv_5x5", 3), ("sep_conv_5x5", 0),
    ],
    reduce_concat=range(2, 6),
)

GENOTYPES: dict[str, Genotype] = {"DARTS_V2": DARTS_V2, "DARTS": DARTS_V2, "STACNAS_CIFAR": STACNAS_CIFAR}


def _parse_alphas(
    alphas: torch.Tensor, ops: Sequence[str], nodes: int, ranking: str
) -> list[tuple[str, int]]:
    num_edges = nodes * (nodes + 3) // 2  # node i has i + 2 incoming edges
    a = torch.as_tensor(alphas).detach().to("cpu", torch.float64)
    if a.shape != (num_edges, len(ops)):
        raise ValueError(
            f"alphas of shape {tuple(a.shape)} do not fit {nodes} nodes × {len(ops)} ops "
            f"(expected ({num_edges}, {len(ops)}))"
        )
    scores = torch.softmax(a, dim=-1) if ranking == "weight" else a
    candidates = [k for k, op in enumerate(ops) if op != _NONE]
    if not candidates:
        raise ValueError("no op other than 'none' to choose from")
    cand = torch.tensor(candidates)
    gene: list[tuple[str, int]] = []
    start = 0
    for i in range(nodes):
        n_in = i + 2
        w = scores[start : start + n_in, cand]
        # Edge strength = its best non-none score; a stable sort keeps the lower input first on ties,
        # exactly as DARTS's `sorted(..., key=-max)`.
        strength = w.max(dim=1).values.tolist()
        edges = sorted(range(n_in), key=lambda j: -strength[j])[:2]
        for j in edges:
            # The first maximum, as DARTS's strict `>` scan.
            k = candidates[int(torch.argmax(w[j]))]
            gene.append((ops[k], j))
        start += n_in
    return gene


def derive_genotype(
    alphas_normal: torch.Tensor,
    alphas_reduce: torch.Tensor,
    ops: Sequence[str],
    nodes: int = 4,
    multiplier: int = 4,
    ranking: Ranking = "weight",
) -> Genotype:
    """Discretize a cell's architecture parameters into a genotype.

    For every intermediate node keep the two incoming edges whose best non-``none`` op scores highest,
    and give each kept edge that op.

    Args:
        alphas_normal, alphas_reduce: ``[num_edges, len(ops)]`` logits (not softmaxed), edges ordered
            node by node, inputs in order, as in DARTS.
        ops: the op names of the alpha columns.
        nodes: intermediate nodes per cell.
        multiplier: how many of the last nodes the cell output concatenates.
        ranking: ``"weight"`` (default; DARTS's published code) ranks edges and ops by softmax weight per
            edge; ``"logit"`` ranks by raw alpha, as the public StacNAS and H-DAS code do. They can pick
            different edges because the softmax is per edge (a strong ``none`` shrinks the others).
    """
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    if not 1 <= multiplier <= nodes:
        raise ValueError(f"multiplier must be in 1..{nodes}, got {multiplier}")
    ops = list(ops)
    concat = range(2 + nodes - multiplier, nodes + 2)
    return Genotype(
        normal=_parse_alphas(alphas_normal, ops, nodes, ranking),
        normal_concat=concat,
        reduce=_parse_alphas(alphas_reduce, ops, nodes, ranking),
        reduce_concat=concat,
    )


def _concat_list(c: Any) -> list[int]:
    return [int(i) for i in c]


def genotype_to_json(g: Genotype, ranking: str | None = None) -> dict[str, Any]:
    """A JSON-ready dict; ``ranking`` (how it was derived) is recorded when given."""
    d: dict[str, Any] = {
        "normal": [[op, int(j)] for op, j in g.normal],
        "normal_concat": _concat_list(g.normal_concat),
        "reduce": [[op, int(j)] for op, j in g.reduce],
        "reduce_concat": _concat_list(g.reduce_concat),
    }
    if ranking is not None:
        d["ranking"] = ranking
    return d


def _as_concat(c: Sequence[int]) -> range | list[int]:
    c = [int(i) for i in c]
    # DARTS writes contiguous concats as range(...); keep that so equality with DARTS's tuples holds.
    if c and c == list(range(c[0], c[0] + len(c))):
        return range(c[0], c[0] + len(c))
    return c


def _as_pairs(field: str, pairs: Any) -> list[tuple[str, int]]:
    if not isinstance(pairs, (list, tuple)):
        raise ValueError(f"genotype field {field!r} must be a list of (op, input) pairs, got {pairs!r}")
    out = []
    for p in pairs:
        if (
            not isinstance(p, (list, tuple)) or len(p) != 2 or not isinstance(p[0], str)
            or not isinstance(p[1], int) or isinstance(p[1], bool) or p[1] < 0
        ):
            raise ValueError(f"genotype field {field!r}: {p!r} is not an (op name, input index) pair")
        out.append((p[0], p[1]))
    if len(out) % 2:
        raise ValueError(f"genotype field {field!r} has {len(out)} pairs; it needs two per node")
    return out


def _from_fields(d: dict[str, Any]) -> Genotype:
    missing = [f for f in Genotype._fields if f not in d]
    if missing:
        raise ValueError(f"genotype is missing field(s) {missing}")
    normal = _as_pairs("normal", d["normal"])
    reduce = _as_pairs("reduce", d["reduce"])
    concats = []
    for f in ("normal_concat", "reduce_concat"):
        c = d[f]
        if not isinstance(c, (list, tuple, range)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in c
        ):
            raise ValueError(f"genotype field {f!r} must be a list of node indices, got {c!r}")
        concats.append(_as_concat(c))
    return Genotype(normal=normal, normal_concat=concats[0], reduce=reduce, reduce_concat=concats[1])


def genotype_from_json(d: dict[str, Any] | str) -> Genotype:
    """Inverse of :func:`genotype_to_json` (a dict or its JSON text); an extra ``ranking`` is ignored."""
    if isinstance(d, str):
        d = json.loads(d)
    if not isinstance(d, dict):
        raise ValueError(f"a genotype JSON must be an object, got {type(d).__name__}")
    extra = sorted(set(d) - set(Genotype._fields) - {"ranking"})
    if extra:
        raise ValueError(f"unexpected genotype field(s) {extra}")
    return _from_fields(d)


def _concat_str(c: Any) -> str:
    c = _concat_list(c)
    if c and c == list(range(c[0], c[0] + len(c))):
        return f"range({c[0]}, {c[0] + len(c)})"
    return repr(c)


def genotype_to_str(g: Genotype) -> str:
    """DARTS's textual form, ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), ...)``.

    DARTS's ``eval(genotype_string)`` reads it; :func:`parse_genotype` reads it without ``eval``.
    """
    def pairs(ps: Sequence[tuple[str, int]]) -> str:
        return "[" + ", ".join(f"({op!r}, {int(j)})" for op, j in ps) + "]"

    return (
        f"Genotype(normal={pairs(g.normal)}, normal_concat={_concat_str(g.normal_concat)}, "
        f"reduce={pairs(g.reduce)}, reduce_concat={_concat_str(g.reduce_concat)})"
    )


def _literal(node: ast.AST, field: str) -> Any:
    # range(a, b) / range(b) are the only calls allowed; everything else must be a plain literal.
    if isinstance(node, ast.Call):
        if (
            isinstance(node.func, ast.Name) and node.func.id == "range" and not node.keywords
            and 1 <= len(node.args) <= 2
        ):
            args = [_literal(a, field) for a in node.args]
            if all(isinstance(a, int) and not isinstance(a, bool) for a in args):
                return range(*args)
        raise ValueError(
            f"genotype field {field!r}: only range(a, b) calls are allowed, got {ast.unparse(node)}"
        )
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"genotype field {field!r} is not a literal: {ast.unparse(node)}") from None


def parse_genotype(s: str) -> Genotype:
    """Parse DARTS's ``Genotype(...)`` string (see :func:`genotype_to_str`) without ``eval``.

    Accepts keyword or positional fields, ``range(2, 6)`` or ``[2, 3, 4, 5]`` concats, and an optional
    ``genotypes.`` prefix; raises ``ValueError`` naming what is wrong otherwise.
    """
    if not isinstance(s, str):
        raise TypeError(f"parse_genotype needs a string, got {type(s).__name__}")
    text = s.strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not a Genotype(...) expression: {text[:80]!r} ({e.msg})") from None
    call = tree.body
    func = call.func if isinstance(call, ast.Call) else None
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if name != "Genotype":
        raise ValueError(f"not a Genotype(...) expression: {text[:80]!r}")
    fields: dict[str, Any] = {}
    if len(call.args) > len(Genotype._fields):
        raise ValueError(f"Genotype takes {len(Genotype._fields)} fields, got {len(call.args)} positional")
    for f, node in zip(Genotype._fields, call.args, strict=False):
        fields[f] = _literal(node, f)
    for kw in call.keywords:
        if kw.arg not in Genotype._fields:
            raise ValueError(f"unknown genotype field {kw.arg!r}; fields are {Genotype._fields}")
        if kw.arg in fields:
            raise ValueError(f"genotype field {kw.arg!r} given twice")
        fields[kw.arg] = _literal(kw.value, kw.arg)
    return _from_fields(fields)


def load_genotype(source: str | os.PathLike[str] | Genotype) -> Genotype:
    """A genotype from a preset name (see :data:`GENOTYPES`), a ``Genotype(...)`` string, JSON text, or
    a file holding either (``.json`` or anything else parsed as the string form)."""
    if isinstance(source, Genotype):
        return source
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise TypeError(f"cannot load a genotype from {type(source).__name__}")
    text = source.strip()
    if text in GENOTYPES:
        return GENOTYPES[text]
    if text.upper() in GENOTYPES:
        return GENOTYPES[text.upper()]
    if text.startswith("{"):
        return genotype_from_json(text)
    if "Genotype(" in text:
        return parse_genotype(text)
    p = Path(text)
    if p.is_file():
        content = p.read_text().strip()
        if content.startswith("{"):
            return genotype_from_json(content)
        return parse_genotype(content)
    raise ValueError(
        f"{text[:80]!r} is no genotype preset ({', '.join(GENOTYPES)}), Genotype(...) string, JSON or file"
    )


def validate_genotype(g: Genotype, space: Any = None, nodes: int | None = None) -> None:
    """Check a genotype's structure and ops; ``ValueError`` naming the first problem.

    Args:
        g: the genotype.
        space: a :class:`~hnas_fast.spaces.SearchSpace`, a space name, or a list of op names; without it
            ops are checked against the op registry.
        nodes: intermediate nodes expected (default: half the pairs of ``g.normal``).
    """
    if space is None:
        allowed, label = set(OPS), "the op registry"
    elif isinstance(space, (list, tuple, set, frozenset)):
        allowed, label = set(space), f"ops {sorted(space)}"
    else:
        sp = get_space(space)
        allowed, label = set(sp.ops), f"space {sp.name!r}"
    for cell in ("normal", "reduce"):
        pairs = _as_pairs(cell, getattr(g, cell))
        n = nodes if nodes is not None else len(pairs) // 2
        if len(pairs) != 2 * n:
            raise ValueError(f"{cell} cell has {len(pairs)} pairs; expected {2 * n} for {n} nodes")
        for idx, (op, j) in enumerate(pairs):
            if op not in allowed:
                raise ValueError(f"{cell} cell uses op {op!r}, which is not in {label}")
            if op == _NONE:
                raise ValueError(f"{cell} cell keeps a 'none' edge (node {idx // 2})")
            if j >= idx // 2 + 2:
                raise ValueError(f"{cell} cell: node {idx // 2} takes input {j}, which is not before it")
        concat = _concat_list(getattr(g, f"{cell}_concat"))
        if not concat or any(not 0 <= c < n + 2 for c in concat) or len(set(concat)) != len(concat):
            raise ValueError(f"{cell}_concat {concat} must list distinct states in 0..{n + 1}")
