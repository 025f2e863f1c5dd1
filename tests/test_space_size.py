"""Search-space sizes against the H-DAS paper's section 6.2 (see hnas_fast/analysis/space_size.py for the
readings of its garbled formulas)."""
from __future__ import annotations

import importlib
import math

import pytest

from hnas_fast.space_size import main

# By module path: a package-level export of the function space_size must not shadow the module here.
ss = importlib.import_module("hnas_fast.analysis.space_size")


def test_darts_cell_exact():
    # Π_{k=1}^{4} C(k+1, 2) · 7^2 = (1·3·6·10) · 49^4
    assert ss.cell_space_size() == 180 * 49**4
    assert ss.darts_space_size() == (180 * 49**4) ** 2
    assert ss.hcdas_space_size() == (180 * 49**4) ** 5


def test_paper_orders_of_magnitude():
    # The paper states each size as 10^e with e the floor or the nearest integer of the exact log10.
    for row in ss.paper_table():
        assert math.floor(row.log10) <= row.paper_exponent <= math.ceil(row.log10), row


def test_readings_of_garbled_text():
    # (3^2) inside the product: with it outside the 6-cell stage would be ~10^6, not the stated 10^10.
    assert math.floor(ss.log10(ss.stage_dag_space_size(6))) == 10
    assert ss.log10(56700 * 9) < 7
    # Sliding window m=3: node k sees min(k+1, 3) candidates: 1·3·3^4 pairs and 9^6 op choices.
    assert ss.stage_dag_space_size(6, window=3) == 1 * 3 * 3**4 * 9**6
    # "combined with cells = 10^42" is the windowed stages (10^24) times DARTS's 10^18, not (10^10)^3·10^18.
    assert ss.hsdas_with_cells_space_size() == ss.hsdas_space_size(window=3) * ss.darts_space_size()
    assert math.floor(ss.log10(ss.hsdas_space_size() * ss.darts_space_size())) == 49
    # Distribution search: the paper rounds per stage ((10^15)^3 = 10^45); the exact total is 10^46.2.
    stage = ss.distribution_stage_space_size()
    assert math.floor(ss.log10(stage)) == 15
    assert ss.distribution_space_size() == stage**3
    assert 46 < ss.log10(stage**3) < 47
    # With the window, the last two terms use Π_{k=1}^{2} as the pattern does (not the printed 5 and 6).
    assert ss.distribution_stage_space_size(window=3) == sum(3 * 3 ** (n - 2) * 9**n for n in range(4, 9))


def test_window_never_grows_the_space():
    for n in range(2, 8):
        full = ss.stage_dag_space_size(n)
        assert ss.stage_dag_space_size(n, window=n + 1) == full
        assert ss.stage_dag_space_size(n, window=3) <= full


def test_bad_input():
    with pytest.raises(ValueError, match="window"):
        ss.stage_dag_space_size(6, window=1)
    with pytest.raises(ValueError, match="unknown space kind"):
        ss.space_size("nope")
    with pytest.raises(ValueError, match="n_min"):
        ss.distribution_stage_space_size(5, 4)


def test_cli(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "Hc-DAS" in out and "1e45" in out
    assert main(["--kind", "stage", "--cells", "6", "--window", "3"]) == 0
    assert str(ss.stage_dag_space_size(6, window=3)) in capsys.readouterr().out
    assert main(["--kind", "stage", "--window", "1"]) == 2
