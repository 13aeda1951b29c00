"""dlbench: the results report of a deep-learning course as one reproducible Snakemake DAG."""

__version__ = "0.1.0"
