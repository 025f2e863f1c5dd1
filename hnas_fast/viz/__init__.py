"""Diagrams: genotype cells."""

from hnas_fast.viz.cells import cell_figure, plot_cell

__all__ = ["cell_figure", "plot_cell"]
