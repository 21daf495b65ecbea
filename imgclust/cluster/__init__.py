"""Clustering methods, their registry, choosing k and the cluster tree."""
