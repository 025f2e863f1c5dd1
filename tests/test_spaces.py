"""Search spaces: presets, group partitions, StacNAS stage spaces, user spaces from files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from hnas_fast.nn.operations import register_op, unregister_op
from hnas_fast.spaces import DARTS_PRIMITIVES, SPACES, SearchSpace, get_space, load_space


def test_darts_is_primitives_in_order() -> None:
    assert get_space("darts").ops == (
        "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
        "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
    )
    assert get_space("darts").ops == DARTS_PRIMITIVES == get_space("S1").ops
    assert get_space("darts").groups == get_space("s1").groups


@pytest.mark.parametrize("name", sorted(SPACES))
def test_groups_partition_non_none_ops(name: str) -> None:
    sp = SPACES[name]
    grouped = [op for g in sp.groups for op in g]
    assert sorted(grouped) == sorted(op for op in sp.ops if op != "none")
    assert len(sp.representatives) == len(sp.groups)
    assert all(r in g for r, g in zip(sp.representatives, sp.groups, strict=True))
    assert "none" in sp.ops


def test_stacnas_groups() -> None:
    g = {n: {frozenset(x) for x in SPACES[n].groups} for n in ("s1", "s2", "s3", "s4", "s5")}
    assert g["s1"] == {frozenset({"max_pool_3x3", "avg_pool_3x3"}), frozenset({"skip_connect"}),
                       frozenset({"sep_conv_3x3", "sep_conv_5x5"}),
                       frozenset({"dil_conv_3x3", "dil_conv_5x5"})}
    assert g["s2"] == {frozenset({"skip_connect", "max_pool_3x3", "max_pool_5x5", "avg_pool_3x3",
                                  "avg_pool_5x5"}), frozenset({"sep_conv_3x3", "sep_conv_5x5"})}
    assert g["s3"] == {frozenset({"max_pool_3x3"}), frozenset({"skip_connect"}),
                       frozenset({"sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7"}),
                       frozenset({"dil_conv_3x3", "dil_conv_5x5"})}
    assert g["s4"] == {frozenset({"skip_connect"}),
                       frozenset({"sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"})}
    assert g["s5"] == {frozenset({"skip_connect"}), frozenset({"sep_conv_3x3"})}
    # StacNAS Appendix A key operators for S1.
    keys = {"max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"}
    assert set(SPACES["s1"].representatives) == keys
    assert set(get_space("hdas_stage").ops) == {"max_pool_3x3", "avg_pool_3x3", "skip_connect", "none"}


def test_stage1_and_subspace() -> None:
    sp = get_space("darts")
    s1 = sp.stage1()
    # StacNAS stage 1 on S1: 5 ops per edge (4 group keys + none), in the parent's order.
    assert s1.ops == ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
    assert s1.num_ops == 5
    conv = sp.subspace(sp.group_of("sep_conv_3x3"))
    assert conv.ops == ("none", "sep_conv_3x3", "sep_conv_5x5")
    assert sp.subspace(["dil_conv_5x5", "max_pool_3x3"]).ops == ("none", "max_pool_3x3", "dil_conv_5x5")
    assert get_space("s3").subspace(2).ops == ("none", "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7")
    with pytest.raises(IndexError):
        sp.subspace(4)
    with pytest.raises(ValueError, match="not in space"):
        sp.subspace(["sep_conv_7x7"])
    with pytest.raises(ValueError, match="no group"):
        sp.group_of("none")


def test_bad_names_and_bad_spaces() -> None:
    with pytest.raises(ValueError, match=r"known spaces: .*darts"):
        get_space("nope")
    with pytest.raises(ValueError, match="unknown op"):
        SearchSpace("x", ("none", "conv_9x9"))
    with pytest.raises(ValueError, match="partition"):
        SearchSpace("x", ("none", "skip_connect", "sep_conv_3x3"), (("skip_connect",),))
    with pytest.raises(ValueError, match="partition"):
        SearchSpace("x", ("none", "skip_connect"), (("skip_connect",), ("skip_connect",)))
    with pytest.raises(ValueError, match="'none' must not"):
        SearchSpace("x", ("none", "skip_connect"), (("skip_connect", "none"),))
    with pytest.raises(ValueError, match="duplicate"):
        SearchSpace("x", ("none", "skip_connect", "skip_connect"))
    with pytest.raises(ValueError, match="representatives"):
        SearchSpace("x", ("none", "skip_connect", "sep_conv_3x3"), representatives=("sep_conv_3x3",))


def test_default_groups_and_representatives() -> None:
    sp = SearchSpace("x", ("sep_conv_5x5", "none", "skip_connect"))
    assert sp.groups == (("sep_conv_5x5",), ("skip_connect",))
    sp = SearchSpace("x", ("none", "sep_conv_5x5", "sep_conv_3x3"), (("sep_conv_5x5", "sep_conv_3x3"),))
    assert sp.representatives == ("sep_conv_3x3",)  # the 3×3 member, as StacNAS keys groups


def test_load_space_json_yaml_roundtrip(tmp_path: Path) -> None:
    d = {"name": "mine", "ops": ["none", "skip_connect", "sep_conv_3x3", "sep_conv_5x5"],
         "groups": [["skip_connect"], ["sep_conv_3x3", "sep_conv_5x5"]]}
    p = tmp_path / "space.json"
    p.write_text(json.dumps(d))
    sp = load_space(p)
    assert sp.name == "mine" and sp.ops == tuple(d["ops"])
    assert sp.representatives == ("skip_connect", "sep_conv_3x3")
    y = tmp_path / "space.yaml"
    y.write_text("name: mine\nops: [none, skip_connect, sep_conv_3x3, sep_conv_5x5]\n"
                 "groups:\n  - [skip_connect]\n  - [sep_conv_3x3, sep_conv_5x5]\n")
    assert load_space(y) == sp
    assert SearchSpace.from_dict(json.loads(json.dumps(sp.to_dict()))) == sp
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "b", "ops": ["none", "conv_9x9"]}))
    with pytest.raises(ValueError, match="conv_9x9"):
        load_space(bad)
    bad.write_text(json.dumps({"name": "b", "opz": ["none"]}))
    with pytest.raises(ValueError, match="opz"):
        load_space(bad)
    with pytest.raises(ValueError, match="json"):
        load_space(tmp_path / "space.txt")


def test_user_op_space() -> None:
    register_op("test_space_op", lambda C, stride, affine: nn.Identity())
    try:
        sp = SearchSpace.from_dict({"name": "u", "ops": ["none", "test_space_op", "skip_connect"]})
        assert sp.stage1().ops == ("none", "test_space_op", "skip_connect")
    finally:
        unregister_op("test_space_op")
