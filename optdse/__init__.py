"""optdse: find the Pareto front of model-serving configurations without exhaustive grids."""

__version__ = "0.1.0"
