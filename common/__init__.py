"""fedpcr common code: preprocessing, data, models, training and statistics. Never imports Flower."""

__version__ = "0.1.0"
