"""Coordinator side: Flower ServerApp, strategies, SuperLink launcher, certificates."""
