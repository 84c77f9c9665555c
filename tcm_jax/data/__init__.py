"""Datasets, open-world class splits, class-balanced batches and transforms."""
