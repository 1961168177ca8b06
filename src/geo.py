"""Distances on the Earth, in one place (the time neighbours, GPS tracks and the landmark checks all use them)."""
from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_M = 6_371_000.0  # the mean radius: haversine distances within 0.5 % of the ellipsoid's


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two points (plain floats: the per-photo path)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, max(0.0, a))))


def haversine_m(lat1, lon1, lat2, lon2):
    """Great-circle distance in metres; numpy arrays (broadcast)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    d = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return float(d) if np.ndim(d) == 0 else d


def format_km(metres: float) -> str:
    """``6_120_000`` -> ``"6,120 km"``, ``850`` -> ``"0.9 km"``."""
    return f"{metres / 1000:,.0f} km" if metres >= 10_000 else f"{metres / 1000:.1f} km"
