"""Trainables: the multitask minBERT model, its data, extensions and training loop.

Nothing here imports `hpsearch`: a trainable runs alone (`hpsearch train`) or inside a Ray
Tune trial, and learns about its surroundings only through the callbacks it is given.
"""
