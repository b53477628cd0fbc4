"""Generic metrics: uncertainty (uq.py), images (image.py), statistics (stats.py); figures in figures.py."""
