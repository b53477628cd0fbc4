"""Guidance: DPS (dps.py) and its weight schedules (weights.py)."""
