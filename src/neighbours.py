"""Places from time neighbours: one GPS device's photos as a sorted timeline, and a photo's place from the ones
taken just before and after it (interpolated, or the nearest), with an accuracy radius and its evidence.

Times are float seconds: instants in UTC seconds since 1970, device clocks in the same unit read as if UTC.
Accuracy model (metres): ``GPS_ERROR_M + v * (gap + clock_uncertainty)`` where ``gap`` is the time to the nearer
neighbour used and ``v = max(walking speed, the speed the neighbours imply)``: in the gap the photographer can
have moved at walking pace, or as fast as the neighbouring GPS photos show them moving (a drive, a train), plus
the spread of neighbours that share one timestamp.
"""
from __future__ import annotations

import bisect
import math
import os
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from .geo import distance_m, haversine_m

EPOCH = datetime(1970, 1, 1)
GPS_ERROR_M = 20.0            # a phone's GPS fix outdoors, typical horizontal error
WALKING_MPS = 5.0 / 3.6       # the envelope when the neighbours show no faster movement
MIN_LEG_S = 60.0              # speeds between neighbours are measured over at least a minute
FLIGHT_NEAR_S = 15 * 60.0     # between two neighbours too far apart for ground travel, only this close counts


def clock_seconds(when: datetime) -> float:
    """A naive wall-clock time as seconds since 1970 (read as if UTC); an aware one is converted to UTC first."""
    if when.tzinfo is not None:
        when = (when - when.utcoffset()).replace(tzinfo=None)
    return (when - EPOCH).total_seconds()


def format_gap(seconds: float) -> str:
    """``42`` -> ``"42 s"``, ``240`` -> ``"4 min"``, ``4800`` -> ``"1 h 20 min"``."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"


@dataclass
class Estimate:
    """A place from time neighbours. ``used``: ``(path, lat, lon, seconds)`` of each neighbour it came from."""
    lat: float
    lon: float
    accuracy_m: float
    evidence: str
    gap_s: float
    used: tuple = field(default_factory=tuple)


class Anchors:
    """One GPS device's photos that have both a position and a capture instant, sorted by (instant, path)."""

    def __init__(self, device: str, rows: list[tuple]):
        """``rows``: ``(instant seconds, lat, lon, path[, the device's UTC offset in minutes])``."""
        rows = sorted(rows, key=lambda r: (r[0], r[3]))
        # the local time zone the device was on at each photo (NaN: unknown): a camera clock is most likely set
        # to the same one, which breaks ties between offsets that interleave equally well
        self.offset_min = np.array([r[4] if len(r) > 4 and r[4] is not None else np.nan for r in rows], np.float64)
        self.device = device
        self.secs = np.array([r[0] for r in rows], dtype=np.float64)
        self.lat = np.array([r[1] for r in rows], dtype=np.float64)
        self.lon = np.array([r[2] for r in rows], dtype=np.float64)
        self.paths = [r[3] for r in rows]
        self._secs_list = self.secs.tolist()
        self._lat_list, self._lon_list = self.lat.tolist(), self.lon.tolist()

    def __len__(self) -> int:
        return len(self.paths)

    def nearest(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each time in ``t`` (any shape): the index of the nearest anchor and the gap to it in seconds."""
        t = np.asarray(t, dtype=np.float64)
        n = len(self.secs)
        if n == 0:
            return np.zeros(t.shape, dtype=np.int64), np.full(t.shape, np.inf)
        right = np.clip(np.searchsorted(self.secs, t), 0, n - 1)
        left = np.clip(right - 1, 0, n - 1)
        d_right, d_left = np.abs(self.secs[right] - t), np.abs(t - self.secs[left])
        use_left = d_left <= d_right
        return np.where(use_left, left, right), np.where(use_left, d_left, d_right)

    def _leg_speed(self, i: int, j: int, max_gap_s: float) -> float:
        """Speed between anchors ``i`` and ``j`` in m/s (0 if either is missing or they are too far apart in time)."""
        if i < 0 or j >= len(self.secs) or i >= j:
            return 0.0
        dt = self._secs_list[j] - self._secs_list[i]
        if dt > max_gap_s:
            return 0.0
        dist = distance_m(self._lat_list[i], self._lon_list[i], self._lat_list[j], self._lon_list[j])
        # two fixes' errors are not movement, and over seconds they would read as a sprint
        dist = max(0.0, dist - 2 * GPS_ERROR_M)
        return dist / max(dt, MIN_LEG_S) if dist > 0 else 0.0

    def _envelope(self, first: int, end: int, max_gap_s: float, max_speed_mps: float) -> float:
        """The speed the photographer may have moved at around anchors ``first..end-1``: walking, or the plausible
        legs into and out of them (a leg faster than ``max_speed_mps`` is a flight: not how they moved here)."""
        legs = [self._leg_speed(first - 1, first, max_gap_s), self._leg_speed(end - 1, end, max_gap_s)]
        return max([WALKING_MPS] + [v for v in legs if v <= max_speed_mps])

    def _name(self, i: int) -> str:
        return os.path.basename(self.paths[i])

    def _row(self, i: int) -> tuple:
        return (self.paths[i], round(self._lat_list[i], 6), round(self._lon_list[i], 6), self._secs_list[i])

    def estimate(self, t: float, max_gap_s: float, max_speed_mps: float, clock_unc_s: float = 0.0) -> Estimate | None:
        """The place at time ``t`` from the anchors around it, or ``None`` when none is within ``max_gap_s``."""
        lo = bisect.bisect_left(self._secs_list, t)
        hi = bisect.bisect_right(self._secs_list, t)
        if hi > lo:  # neighbours at exactly this time: their mean, their spread added to the accuracy
            lats, lons = self.lat[lo:hi], self.lon[lo:hi]
            lat, lon = float(lats.mean()), float(_mean_lon(lons))
            spread = float(np.max(haversine_m(lat, lon, lats, lons)))
            speed = self._envelope(lo, hi, max_gap_s, max_speed_mps)
            names = ", ".join(self._name(i) for i in range(lo, min(hi, lo + 3))) + (" ..." if hi - lo > 3 else "")
            return Estimate(lat, lon, GPS_ERROR_M + spread + speed * clock_unc_s, f"{names}, same time", 0.0,
                            tuple(self._row(i) for i in range(lo, hi)))
        before, after = lo - 1, lo  # secs[before] < t < secs[after]
        secs, lats, lons = self._secs_list, self._lat_list, self._lon_list
        d_b = t - secs[before] if before >= 0 else math.inf
        d_a = secs[after] - t if after < len(secs) else math.inf
        if min(d_b, d_a) > max_gap_s:
            return None
        if d_b <= max_gap_s and d_a <= max_gap_s:
            dist = distance_m(lats[before], lons[before], lats[after], lons[after])
            speed = dist / (d_b + d_a)
            if speed <= max_speed_mps:
                frac = d_b / (d_b + d_a)
                lat = lats[before] + frac * (lats[after] - lats[before])
                lon = _lerp_lon(lons[before], lons[after], frac)
                v = max(WALKING_MPS, speed)
                acc = GPS_ERROR_M + v * (min(d_b, d_a) + clock_unc_s)
                text = (f"between {self._name(before)} ({format_gap(d_b)} before) and "
                        f"{self._name(after)} ({format_gap(d_a)} after)")
                return Estimate(lat, lon, acc, text, min(d_b, d_a), (self._row(before), self._row(after)))
        # the nearest alone: the other side is missing, too far in time, or implies an implausible speed
        i, gap = (before, d_b) if d_b <= d_a else (after, d_a)
        if d_b <= max_gap_s and d_a <= max_gap_s and gap > FLIGHT_NEAR_S:
            return None  # a flight in between, at a time we do not know: on either side of it
        v = self._envelope(i, i + 1, max_gap_s, max_speed_mps)
        acc = GPS_ERROR_M + v * (gap + clock_unc_s)
        text = f"{self._name(i)}, {format_gap(gap)} {'earlier' if i == before else 'later'}"
        return Estimate(lats[i], lons[i], acc, text, gap, (self._row(i),))


def _lerp_lon(a: float, b: float, frac: float) -> float:
    """Longitude interpolation the short way round (across the antimeridian when that is shorter)."""
    if b - a > 180:
        b -= 360
    elif a - b > 180:
        b += 360
    lon = a + frac * (b - a)
    return (lon + 180.0) % 360.0 - 180.0


def _mean_lon(lons: np.ndarray) -> float:
    rad = np.radians(lons)
    return float(np.degrees(np.arctan2(np.sin(rad).mean(), np.cos(rad).mean())))
