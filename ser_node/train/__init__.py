"""The train extra: corpora, folds, networks, training loops, export (torch, sklearn)."""
