"""Whose camera: whether a device's session was with a GPS device, so that it may take its places.

A session is placed from a GPS device only when it was with it: the same device, the user's ``together`` mapping,
or evidence at the clock offset :mod:`src.clocks` found: at home (a place where the GPS devices spend many days)
the interleaving, a landmark agreement or similar scenes suffice; away from home interleaving alone is not enough:
it needs a landmark agreement, similar scenes (the pixels), a strong interleave the pixels do not contradict, a
device that travelled with the GPS device before, or an adjacent session of the same device shown to be on the
same trip.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import TYPE_CHECKING, Callable

import numpy as np

from .clocks import (GRID_MIN, HOME_CELL_DEG, SHIFTS_MIN, SIMILAR_FAR_M, SIMILAR_SAMPLE, Session, clear_peak,
                     estimate_offset, fmt_offset, gps_candidates, landmark_counts, offset_from_history,
                     offset_from_local_time, offset_scores, pool_trips, set_offset)
from .geo import haversine_m
from .neighbours import Anchors, format_gap

if TYPE_CHECKING:
    from .locate import LocateOptions

SIMILAR_Z = 2.0  # standard errors a pixels' verdict against being together must stand clear of its level


class Home:
    """Where the GPS devices spend many days: 0.5-degree cells (with their neighbours) holding GPS photos on at least
    ``max(min_days, share * the busiest cell's days)`` distinct days."""

    def __init__(self, anchors: list[Anchors], min_days: int = 3, share: float = 0.5):
        days: dict[tuple[int, int], set] = defaultdict(set)
        for a in anchors:
            cells = zip(np.floor(a.lat / HOME_CELL_DEG).astype(int).tolist(),
                        np.floor(a.lon / HOME_CELL_DEG).astype(int).tolist(), (a.secs // 86400).astype(int).tolist())
            for cy, cx, day in cells:
                days[(cy, cx)].add(day)
        self._days = days
        self._cache: dict[tuple[int, int], int] = {}
        busiest = max((self._count(c) for c in days), default=0)
        self.threshold = max(min_days, share * busiest)

    def _count(self, cell: tuple[int, int]) -> int:
        if cell not in self._cache:
            union: set = set()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    union |= self._days.get((cell[0] + dy, cell[1] + dx), set())
            self._cache[cell] = len(union)
        return self._cache[cell]

    def contains(self, lat: float, lon: float) -> bool:
        return self._count((math.floor(lat / HOME_CELL_DEG), math.floor(lon / HOME_CELL_DEG))) >= self.threshold


def _similar(s: Session, g: Anchors, similarity: Callable[[str, str], float] | None, opts) -> float | None:
    """The pixels: the session's photos look more like the GPS photos shot with them than like the same device's
    GPS photos from elsewhere (over ``SIMILAR_FAR_M`` away): scenes of this place, not of the place it stayed."""
    if similarity is None:
        return None
    idx, gap = g.nearest(s.times - s.offset_s)
    ok = np.flatnonzero(gap <= opts.match_window_s)
    if len(ok) < 2:
        return None
    centre = np.median(g.lat[idx[ok]]), np.median(g.lon[idx[ok]])
    far = np.flatnonzero(haversine_m(centre[0], centre[1], g.lat, g.lon) > SIMILAR_FAR_M)
    far = far[np.linspace(0, len(far) - 1, min(len(far), SIMILAR_SAMPLE)).astype(int)] if len(far) else far
    matched, baseline = [], []
    for j in ok[:SIMILAR_SAMPLE].tolist():
        pairs = [(matched, int(idx[j]))] + [(baseline, int(k)) for k in far.tolist()]
        for bucket, k in pairs:
            value = similarity(s.paths[j], g.paths[k])
            if value is not None:
                bucket.append(value)
    if len(matched) < 2 or not baseline:
        return None
    # its standard error: the matched pairs are few (often 2), so their mean scatters by about the spread of
    # single pairs' similarities over sqrt(pairs); the baseline's many pairs add little
    s.similar_se = float(np.std(np.concatenate([np.subtract(matched, np.mean(matched)),
                                                np.subtract(baseline, np.mean(baseline))]))) / math.sqrt(len(matched))
    return float(np.mean(matched)) - float(np.mean(baseline))


def _evidence_at_offset(s: Session, lm, g: Anchors, home: Home, similarity, opts) -> None:
    """Interleaving (known clocks), landmark agreement, the pixels and home/away at the session's offset."""
    if s.known:
        score, matched, _, _ = offset_scores(s.times, lm, g, SHIFTS_MIN * 60.0, opts)
        zero = int(np.flatnonzero(SHIFTS_MIN == 0)[0])
        s.interleave_ok = clear_peak(SHIFTS_MIN, score, zero, opts)[0]
        s.offset_support = float(matched[zero])
        if s.interleave_ok and s.device != g.device:
            s.detail = (f"with {g.device}: {matched[zero]:.0f} of {len(s.paths)} photos within "
                        f"{format_gap(opts.match_window_s)} of its photos")
    else:
        # a clear winner (alone or over its trip), or its history, with some photos matched; "same place" offsets
        # are unsure, so their matches say nothing about being together
        s.interleave_ok = s.offset_support >= 1 and s.offset_kind in ("clear", "trip", "local", "history")
    agree, disagree = landmark_counts(s.times, lm, g, np.array([s.offset_s]), opts.max_gap_s,
                                       opts.max_speed_kmh / 3.6)
    s.landmark_ok = agree[0] >= 1 and disagree[0] == 0
    s.similar_gain = _similar(s, g, similarity, opts)
    # as for the veto: a gain counts only when it stands two standard errors clear of "no more alike than photos
    # from elsewhere" (two or three pairs, one very alike and one not, are no verdict either way)
    s.similar_ok = (s.similar_gain is not None and s.similar_gain >= opts.similar_margin
                    and s.similar_gain - SIMILAR_Z * s.similar_se > 0.0)
    firm = s.known or s.offset_kind in ("clear", "trip")
    s.strong_ok = bool(s.interleave_ok and firm and s.offset_support >= max(opts.min_support, 0.5 * len(s.paths)))
    idx, gap = g.nearest(s.times - s.offset_s)
    near = idx[gap <= opts.max_gap_s]
    s.away = any(not home.contains(g.lat[i], g.lon[i]) for i in set(near.tolist()))


def decide_sessions(sessions: list[Session], anchors: dict[str, Anchors], landmarks: dict[str, tuple],
                    similarity: Callable[[str, str], float] | None, opts: LocateOptions) -> None:
    """Fill each session's offset, GPS device and together decision (or its note)."""
    home = Home(list(anchors.values()))
    lm_by_session, cands_by_session = [], []
    for s in sessions:
        lm = [(j, *landmarks[p]) for j, p in enumerate(s.paths) if p in landmarks]
        cands, mapped = gps_candidates(s, anchors, opts)
        s.mapped = mapped
        lm_by_session.append(lm)
        cands_by_session.append(cands)
        if not cands:
            s.note = "no GPS photos from the device it was with" if mapped else "no photos with GPS in the library"
        elif s.known:
            s.offset_s = 0.0
        else:
            estimate_offset(s, lm, cands, opts)
    pool_trips(sessions, cands_by_session, opts)
    offset_from_trip(sessions, cands_by_session, home, opts)
    offset_from_history(sessions, cands_by_session, opts)
    # a device without a clock history: its local-time sessions, then its other sessions from them
    offset_from_local_time(sessions, cands_by_session, opts)
    offset_from_history(sessions, cands_by_session, opts)
    for i, s in enumerate(sessions):
        if s.offset_s is None:
            if not s.note:
                s.note = "camera clock offset unknown: its photos match no GPS photos clearly at any time zone"
            continue
        cands = cands_by_session[i]
        if s.known:  # the GPS device it interleaves with best
            best = max(cands, key=lambda g: offset_scores(s.times, lm_by_session[i], g, np.zeros(1), opts)[0][0])
        else:
            best = next(g for g in cands if g.device == s.gps_device)
        s.gps_device = best.device
        _evidence_at_offset(s, lm_by_session[i], best, home, similarity, opts)
    _decide_together(sessions, opts, lambda a, b: _one_stay(a.times - a.offset_s, b.times - b.offset_s,
                                                                anchors[b.gps_device], home, opts))


def _decide_together(sessions: list[Session], opts, one_stay: Callable[[Session, Session], bool]) -> None:
    by_device: dict[str, list[Session]] = defaultdict(list)
    for s in sessions:
        if s.offset_s is not None:
            by_device[s.device].append(s)
    for s in sessions:
        if s.offset_s is None:
            continue
        if s.mapped:
            s.together, s.corroborated = True, True
        elif not s.away:
            s.together = s.interleave_ok or s.landmark_ok or s.similar_ok
        else:
            # interleaving alone abroad: only when most of its photos were shot with the GPS device's and the
            # pixels, when they can judge, do not say its scenes look more like elsewhere
            against = _pixels_against(s, opts)
            # "same place": the offset is unsure but not the place; scenes measurably like the phone's there say the
            # camera was there too (a second camera at home looks like home, not like the phone's trip)
            s.corroborated = (s.landmark_ok or ((s.interleave_ok or "same place" in s.offset_kind) and s.similar_ok)
                              or (s.strong_ok and not against))
            s.together = s.corroborated
    for s in sessions:  # at home, a device seen with the GPS device at home before: its history is evidence
        if s.offset_s is not None and not s.together and not s.away and s.offset_support >= 1 \
                and "same place" not in s.offset_kind:
            others = [o for o in by_device[s.device] if o is not s and o.together and not o.away
                      and o.gps_device == s.gps_device]
            if others:
                s.together = True
                s.detail += f"; as in its session of {os.path.basename(others[0].paths[0])} at home"
    for s in sessions:  # abroad, a device that travelled with the GPS device before (shown by a landmark on an
        # earlier trip) and whose clock now lines up sharply with it again: its history is evidence (a camera left
        # at home lines up, if at all, by coincidence: no sharp peak)
        if s.offset_s is None or s.together or not s.away or not s.interleave_ok:
            continue
        if _pixels_below(s, 0.0):  # its photos look measurably less like the GPS photos of the hours than like
            continue               # those from elsewhere
        if not (s.known or s.offset_kind in ("clear", "trip")):
            continue
        trips = [o for o in by_device[s.device] if o is not s and o.together and o.away and o.landmark_ok
                 and o.gps_device == s.gps_device]
        if trips:
            s.together = s.corroborated = True
            s.detail += (f"; it travelled with {s.gps_device} before (its session of "
                         f"{os.path.basename(trips[0].paths[0])}: a landmark where the GPS photos were)")
    for _ in range(len(sessions)):  # a trip: adjacent sessions of the same device shown to be there
        changed = False
        for device_sessions in by_device.values():
            device_sessions.sort(key=lambda x: float(x.times[0]))
            for j, s in enumerate(device_sessions):
                if s.together or not s.away or _pixels_against(s, opts):
                    continue
                for k in range(len(device_sessions)):
                    if k != j and _adjacent(s, device_sessions[k], opts, one_stay):
                        s.together = s.corroborated = changed = True
                        s.detail += f"; same trip as its session of {os.path.basename(device_sessions[k].paths[0])}"
                        break
        if not changed:
            break
    for s in sessions:
        if s.offset_s is not None and not s.together:
            if s.away:
                s.note = (f"{s.device} not shown to be with {s.gps_device}, which was away from home then: "
                          "shooting at the same times alone is not enough (no landmark agreement, no similar scenes)")
            else:
                s.note = f"{s.device} not shown to be with {s.gps_device} (no clear overlap of shooting)"


def _pixels_below(s: Session, level: float) -> bool:
    """The pixels judged and found the photos shot together less alike than ``level`` above photos from elsewhere,
    measurably: by more than two standard errors (two pairs of unrelated-looking photos are no verdict)."""
    return s.similar_gain is not None and s.similar_gain + SIMILAR_Z * s.similar_se < level


def _pixels_against(s: Session, opts) -> bool:
    """The pixels found the photos shot together no more alike than photos from elsewhere (under half the margin,
    measurably): scenes that do not overlap."""
    return _pixels_below(s, opts.similar_margin / 2)


def _adjacent(s: Session, other: Session, opts, one_stay) -> bool:
    if not (other.together and other.corroborated and other.away and other.gps_device == s.gps_device):
        return False
    if not s.known and other.grid_min != s.grid_min:
        return False
    gap = max(float(other.times[0]) - float(s.times[-1]), float(s.times[0]) - float(other.times[-1]))
    return gap <= opts.adjacent_gap_s or one_stay(s, other)


def _one_stay(a: np.ndarray, b: np.ndarray, g: Anchors, home: Home, opts) -> bool:
    """Whether two sessions (their instants ``a``, ``b``) lie on one stay away of the GPS device ``g``: its photos
    from the first session's start to the second's end are all away from home and on one time zone (no way home,
    no flight to another zone), and together with the sessions' photos they leave no pause over
    ``adjacent_gap_s`` (a trip day without camera photos does not end the trip; days without any photo do)."""
    lo_t, hi_t = min(float(a.min()), float(b.min())), max(float(a.max()), float(b.max()))
    lo, hi = int(np.searchsorted(g.secs, lo_t, side="left")), int(np.searchsorted(g.secs, hi_t, side="right"))
    if hi <= lo:
        return False
    zones = g.offset_min[lo:hi][~np.isnan(g.offset_min[lo:hi])]
    if len(np.unique(zones)) > 1 or any(home.contains(g.lat[i], g.lon[i]) for i in range(lo, hi)):
        return False
    chain = np.sort(np.concatenate([a, b, g.secs[lo:hi]]))
    return float(np.diff(chain).max(initial=0.0)) <= opts.adjacent_gap_s


def offset_from_trip(sessions: list[Session], cands_by_session, home: Home, opts) -> None:
    """Pass 1b': a session without an offset, or with an unsure one ("same place"), takes the offset of the
    nearest session of its device with a firm one (clear, or its trip's) when, at that offset, both lie on one
    stay away of that session's GPS device (:func:`_one_stay`) and its own scores there are within the margin of
    its best: a camera keeps its clock through a trip, and a stay in one zone gives no reason to set it."""
    firm: dict[str, list[Session]] = defaultdict(list)
    for s in sessions:
        if not s.known and s.offset_kind in ("clear", "trip"):
            firm[s.device].append(s)
    for i, s in enumerate(sessions):
        if s.known or not s.scores or not (s.grid_min is None or s.offset_kind == "same place"):
            continue
        mid = float(np.median(s.times))
        by_device = {g.device: g for g in cands_by_session[i]}
        for ref in sorted(firm.get(s.device, []), key=lambda o: abs(float(np.median(o.times)) - mid)):
            g = by_device.get(ref.gps_device)
            if g is None:
                continue
            k = int(np.flatnonzero(GRID_MIN == ref.grid_min)[0])
            score, matched, _ = s.scores[g.device]
            top = float(score.max())
            if score[k] < top - max(opts.min_margin, 0.25 * top):
                continue
            if not _one_stay(s.times - ref.grid_min * 60.0, ref.times - ref.offset_s, g, home, opts):
                continue
            set_offset(s, g, ref.grid_min, opts)
            s.offset_support, s.offset_kind, s.spread_m = float(matched[k]), "trip", None
            s.detail = (f"{s.device} clock {fmt_offset(ref.grid_min)} as in its session of "
                        f"{os.path.basename(ref.paths[0])}, {g.device} staying away in one time zone between them "
                        f"({matched[k]:.0f} of {len(s.paths)} photos within {format_gap(opts.match_window_s)} of "
                        f"{g.device}'s)")
            break
