"""Dimensionality reduction: streaming and exact PCA, UMAP."""
