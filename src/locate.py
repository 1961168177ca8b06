"""Where each photo was taken, from all of the library's evidence: the photo's own GPS, GPS tracks, the GPS photos
taken close in time (on a clock whose offset is known or estimated, by a device shown to be with the GPS device),
and the landmark the pixels show.

Order of trust: own GPS (``camera``, never replaced) > a GPS track (``track``) > time neighbours (``time``, or
``landmark+time`` when a confident landmark lies where the estimate says) > the pixels alone (``landmark``).
A confident landmark far from a trusted position is withheld; far from a time estimate, the photo gets neither.
Sessions, clocks and "whose camera" are in :mod:`src.clocks`; the interpolation and its accuracy in
:mod:`src.neighbours`. See docs/locate.md.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Mapping

import numpy as np

from .clocks import Session, build_sessions, clock_settings_s, device_clocks, fmt_offset
from .company import decide_sessions
from .evidence import PhotoEvidence
from .geo import distance_m, format_km, haversine_m
from .landmarks import display_name, landmark_info, landmark_radius_m, place_contradicts
from .neighbours import WALKING_MPS, Anchors, Estimate, clock_seconds, format_gap


@dataclass
class LandmarkCandidate:
    """What the pixels say: the top landmark, where it is, and how sure the model is."""
    key: str                      # class key, e.g. "09.Golden_Gate_Bridge"
    name: str                     # display name
    lat: float | None             # where the landmark is (None: no known place)
    lon: float | None
    radius_m: float               # how far from that point a photo of it can be taken
    confidence: float             # calibrated confidence of the top landmark
    threshold: float              # confidence >= threshold: named from the pixels alone


@dataclass
class LocateOptions:
    """Knobs of :func:`locate_library`; the defaults are explained in docs/locate.md."""
    max_gap_s: float = 3600.0                # a time neighbour further away than this gives nothing (bench_locate)
    max_speed_kmh: float = 300.0             # faster between two neighbours (a flight): the nearest, not between
    use_camera: bool = True
    use_time: bool = True
    use_tracks: bool = True
    use_landmarks: bool = True
    together: dict[str, str] = field(default_factory=dict)   # device -> GPS device ("Canon EOS 80D": "iPhone 12")
    track_offset: timedelta | None = None    # GPS time - camera clock, for photos without a UTC offset on tracks
    agree_threshold: float | None = None     # the pixels' bar when the place agrees (None: the model's threshold)
    max_accuracy_m: float = 25_000.0         # a time estimate less sure than this is no place
    session_gap_s: float = 12 * 3600.0       # a pause this long starts a new session of a device
    match_window_s: float = 600.0            # two devices' photos this close in time count as shot together
    min_support: float = 3.0                 # clear winner rule (src/clocks.py)
    min_margin: float = 3.0
    similar_margin: float = 0.1              # matched photos' mean cosine similarity above the baseline pairs'
    adjacent_gap_s: float = 48 * 3600.0      # sessions this close belong to the same trip


@dataclass
class Placement:
    """Where one photo was taken (``lat``/``lon`` ``None``: no place), how sure, from what, and why not."""
    lat: float | None = None
    lon: float | None = None
    accuracy_m: float | None = None
    source: str = "none"          # camera | track | time | landmark | landmark+time | none
    evidence: str = ""
    landmark_key: str | None = None
    note: str = ""
    inputs: str = ""


def candidate_for(key: str, confidence: float, threshold: float) -> LandmarkCandidate:
    """A :class:`LandmarkCandidate` for a class key, with its place and radius from ``src/landmarks.json``."""
    info = landmark_info(key)
    return LandmarkCandidate(key, display_name(key), info["lat"] if info else None, info["lon"] if info else None,
                             landmark_radius_m(key), confidence, threshold)


def _digest(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _bars(cand: LandmarkCandidate, opts: LocateOptions) -> tuple[float, float]:
    """(bar from the pixels alone, bar when the place agrees)."""
    agree = cand.threshold if opts.agree_threshold is None else opts.agree_threshold
    return cand.threshold, agree


def _landmark_digest(cand: LandmarkCandidate | None) -> list:
    if cand is None:
        return []
    return [cand.key, round(cand.confidence, 4), round(cand.threshold, 4), cand.lat, cand.lon, cand.radius_m]


def _trusted(path: str, lat: float, lon: float, acc: float, source: str, evidence: str,
             cand: LandmarkCandidate | None, opts: LocateOptions, used: list) -> Placement:
    """A place from the photo's own GPS or a track: kept; a landmark is named only where the place agrees."""
    p = Placement(lat, lon, acc, source, evidence)
    if cand is not None and opts.use_landmarks:
        alone, agree_bar = _bars(cand, opts)
        if cand.lat is None:
            if cand.confidence >= alone:
                p.landmark_key = cand.key
        else:
            where = "the photo's own GPS" if source == "camera" else "the GPS track"
            far = place_contradicts(cand.name, cand.confidence, cand.lat, cand.lon, cand.radius_m, (lat, lon),
                                    where, slack_m=acc if source == "track" else 0.0)
            if far is None:
                if cand.confidence >= agree_bar:
                    p.landmark_key = cand.key
            elif cand.confidence >= min(alone, agree_bar):
                p.note = far
    p.inputs = _digest(source, round(lat, 6), round(lon, 6), round(acc, 1), used, _landmark_digest(cand),
                       p.landmark_key)
    return p


def _from_pixels(cand: LandmarkCandidate | None, opts: LocateOptions, note: str, used: list) -> Placement:
    """No place from the evidence: the pixels alone, as for a scan."""
    p = Placement(note=note)
    if cand is not None and opts.use_landmarks and cand.confidence >= cand.threshold:
        p.landmark_key = cand.key
        if cand.lat is not None:
            p.lat, p.lon, p.accuracy_m, p.source = cand.lat, cand.lon, cand.radius_m, "landmark"
            p.evidence = f"pixels: {cand.name} ({cand.confidence:.2f})"
    p.inputs = _digest("pixels", used, note, _landmark_digest(cand), p.landmark_key)
    return p


# A photo the time cannot place may still be placed by its landmark alone, unless the GPS photos (and track points)
# before and after it say the owner could not have been there then, even by air, at any clock its camera may have
# been on (:func:`src.clocks.clock_settings_s`): then the pixels are wrong, not the whereabouts.
TRAVEL_MPS = 111.0                 # 400 km/h door to door: a flight with the airports at both ends
CONTRADICT_SLACK_M = 50_000.0      # beyond the landmark's radius: the GPS photos' own surroundings


class _Whereabouts:
    """Every GPS photo of the library (all devices) and every point of the GPS tracks, by instant: where the owner
    was, and when (a track is the owner's whereabouts as much as a GPS photo is)."""

    def __init__(self, anchors: Mapping[str, Anchors], tracks=None):
        points = getattr(tracks, "points", None) or []
        secs = [a.secs for a in anchors.values()] + [np.array([q.t for q in points], np.float64)]
        lat = [a.lat for a in anchors.values()] + [np.array([q.lat for q in points], np.float64)]
        lon = [a.lon for a in anchors.values()] + [np.array([q.lon for q in points], np.float64)]
        all_secs = np.concatenate(secs)
        order = np.argsort(all_secs, kind="stable")
        self.secs, self.lat, self.lon = all_secs[order], np.concatenate(lat)[order], np.concatenate(lon)[order]

    def contradiction(self, cand: LandmarkCandidate | None, secs: float, offsets_s: np.ndarray) -> str:
        """A note when the owner cannot have been at the landmark at the photo's instant, its clock reading
        ``secs`` less any of the offsets its clock may have been on (``[0]`` for an instant), given the GPS
        photos and track points just before and after it, else ``""``."""
        n = len(self.secs)
        if cand is None or cand.lat is None or not n:
            return ""
        instants = secs - np.asarray(offsets_s, np.float64)
        dist = np.maximum(haversine_m(cand.lat, cand.lon, self.lat, self.lon) - cand.radius_m - CONTRADICT_SLACK_M,
                          0.0)
        after = np.searchsorted(self.secs, instants)          # first GPS photo at or after each instant
        before = after - 1
        ok_before = (before < 0) | (dist[np.clip(before, 0, n - 1)] <=
                                    TRAVEL_MPS * (instants - self.secs[np.clip(before, 0, n - 1)]))
        ok_after = (after >= n) | (dist[np.clip(after, 0, n - 1)] <=
                                   TRAVEL_MPS * (self.secs[np.clip(after, 0, n - 1)] - instants))
        if (ok_before & ok_after).any():
            return ""
        i = int(np.clip(after[len(after) // 2], 0, n - 1))
        far = float(haversine_m(cand.lat, cand.lon, self.lat[i], self.lon[i]))
        return (f"landmark withheld: pixels say {cand.name} ({cand.confidence:.2f}) but the GPS photos before and "
                f"after it leave no time to get there (one is {format_km(far)} from it)")


def _from_pixels_checked(cand: LandmarkCandidate | None, opts: LocateOptions, note: str, used: list,
                         where: _Whereabouts, secs: float, offsets_s: np.ndarray) -> Placement:
    """:func:`_from_pixels` for a photo with a capture time: not where the GPS photos of its hours contradict it."""
    contradiction = where.contradiction(cand, secs, offsets_s) if opts.use_landmarks else ""
    if contradiction and cand is not None and cand.confidence >= cand.threshold:
        p = Placement(note=f"{note}; {contradiction}" if note else contradiction)
        p.inputs = _digest("pixels-contradicted", used, note, _landmark_digest(cand))
        return p
    return _from_pixels(cand, opts, note, used)


def _from_time(est: Estimate, detail: str, cand: LandmarkCandidate | None, opts: LocateOptions,
               used: list) -> Placement:
    """A time estimate with the landmark: agreement gives the landmark's place, disagreement no place."""
    evidence = est.evidence + (f"; {detail}" if detail else "")
    used = used + [list(u) for u in est.used]
    p = Placement(est.lat, est.lon, est.accuracy_m, "time", evidence)
    if cand is not None and opts.use_landmarks:
        alone, agree_bar = _bars(cand, opts)
        if cand.lat is None:
            p.landmark_key = cand.key if cand.confidence >= alone else None
        else:
            dist = distance_m(est.lat, est.lon, cand.lat, cand.lon)
            if dist <= cand.radius_m + est.accuracy_m:
                if cand.confidence >= agree_bar:
                    p.lat, p.lon, p.source, p.landmark_key = cand.lat, cand.lon, "landmark+time", cand.key
                    p.accuracy_m = min(cand.radius_m, est.accuracy_m + dist)
                    p.evidence = f"{cand.name} ({cand.confidence:.2f}) where {evidence}"
            elif cand.confidence >= alone:
                p = Placement(note=(f"no place, landmark withheld: pixels say {cand.name} ({cand.confidence:.2f}) "
                                    f"but the time estimate ({evidence}) is {format_km(dist)} from it"))
    if p.source == "time" and p.accuracy_m > opts.max_accuracy_m:
        p = _from_pixels(cand, opts, f"time estimate too unsure (within {format_km(p.accuracy_m)}: {evidence})",
                         used)
    p.inputs = _digest(p.source, used, _landmark_digest(cand), p.landmark_key, p.note[:40])
    return p


def _normalise_similarity(similarity) -> Callable[[str, str], float | None] | None:
    """A callable, or a dict of unit vectors by path, as ``f(path_a, path_b) -> cosine or None``."""
    if similarity is None or callable(similarity):
        return similarity
    vectors = similarity

    def cosine(a: str, b: str) -> float | None:
        va, vb = vectors.get(a), vectors.get(b)
        return None if va is None or vb is None else float(np.dot(va, vb))
    return cosine


def _device_key(ev: PhotoEvidence) -> str:
    return ev.device or "(unknown camera)"


def _on_track(ev: PhotoEvidence, tracks, opts: LocateOptions):
    """The track's ``(lat, lon, accuracy_m, text)`` for a photo with a capture instant (or a camera clock and the
    user's ``track_offset``), or ``None``."""
    if ev.instant is not None:
        return tracks.position_at(ev.instant, offset=timedelta(0))
    if ev.time_local is not None and opts.track_offset is not None:
        return tracks.position_at(ev.time_local.replace(tzinfo=timezone.utc), offset=opts.track_offset)
    return None


def locate_library(evidence: Mapping[str, PhotoEvidence], candidates: Mapping[str, LandmarkCandidate | None],
                   tracks=None, options: LocateOptions | None = None, similarity=None) -> dict[str, Placement]:
    """Every photo's :class:`Placement`, from the whole library's evidence (see the module docstring).

    ``tracks``: any object with ``position_at(instant_utc, offset=timedelta(0))``. ``similarity``: optional
    ``f(path_a, path_b) -> cosine`` or ``{path: unit vector}``: the pixels as evidence of the same scene.
    """
    opts = options or LocateOptions()
    sim = _normalise_similarity(similarity)
    result: dict[str, Placement] = {}
    gps_rows: dict[str, list] = defaultdict(list)
    for path, ev in evidence.items():
        if opts.use_camera and ev.gps is not None and ev.instant is not None:
            gps_rows[_device_key(ev)].append((clock_seconds(ev.instant), ev.gps[0], ev.gps[1], path,
                                              ev.utc_offset_min))
    anchors = {device: Anchors(device, rows) for device, rows in gps_rows.items()}

    pending: list[tuple[str, str, float, bool]] = []
    notes: dict[str, str] = {}
    for path in sorted(evidence):
        ev, cand = evidence[path], candidates.get(path)
        if opts.use_camera and ev.gps is not None:
            result[path] = _trusted(path, ev.gps[0], ev.gps[1], 0.0, "camera", "camera GPS", cand, opts, [])
            continue
        if tracks is not None and opts.use_tracks:
            hit = _on_track(ev, tracks, opts)
            if hit is not None:
                lat, lon, acc, text = hit
                result[path] = _trusted(path, lat, lon, acc, "track", text, cand, opts, [text])
                continue
        if opts.use_time and ev.time_local is not None:
            known = ev.utc_offset_min is not None
            secs = clock_seconds(ev.instant) if known else clock_seconds(ev.time_local)
            pending.append((path, _device_key(ev), secs, known))
        else:
            notes[path] = "no capture time" if ev.time_local is None else ""

    landmarks = {}
    if opts.use_landmarks:
        for path, _, _, _ in pending:
            cand = candidates.get(path)
            if cand is not None and cand.lat is not None and cand.confidence >= cand.threshold:
                landmarks[path] = (cand.lat, cand.lon, cand.radius_m)
    sessions = build_sessions(pending, opts.session_gap_s)
    decide_sessions(sessions, anchors, landmarks, sim, opts)
    where = _Whereabouts(anchors, tracks if opts.use_tracks else None)
    for s in sessions:
        _place_session(s, anchors, candidates, tracks if opts.use_tracks else None, opts, result, where,
                       clock_settings_s(s, sessions, anchors), device_clocks(s, sessions))
    for path, note in notes.items():
        result[path] = _from_pixels(candidates.get(path), opts, note, [])
    return result


def _track_hits(s: Session, offset_s: float, tracks) -> list:
    """Each photo's position on the track (or ``None``) with its camera clock ``offset_s`` seconds ahead of UTC."""
    return [tracks.position_at(datetime.fromtimestamp(float(t) - offset_s, tz=timezone.utc), offset=timedelta(0))
            for t in s.times]


def _track_clock(s: Session, tracks, clocks: list[int]) -> tuple[float, list]:
    """For a session whose clock is its device's history alone (no GPS photo matched it): the offset (seconds), of
    its own and ``clocks`` (its device's clocks just before and after it: a camera keeps its clock until someone
    sets it, once, somewhere between them), that puts the most of its photos on the track, and the track's hits.
    The history's nearest clock, by time, can be the one set after this session (a trip later on)."""
    best = None
    for minutes in [s.grid_min] + [c for c in clocks if c != s.grid_min]:
        offset = s.offset_s if minutes == s.grid_min else minutes * 60.0
        hits = _track_hits(s, offset, tracks)
        n = sum(h is not None for h in hits)
        if best is None or n > best[0]:
            best = (n, minutes, offset, hits)
    if best[1] != s.grid_min:
        s.detail = (f"{s.device} clock {fmt_offset(best[1])} as in its session just before or after this one: it "
                    f"puts {best[0]} of {len(s.paths)} photos on the track (none matched a GPS photo)")
        s.grid_min, s.offset_s = best[1], best[2]
    return best[2], best[3]


def _place_session(s: Session, anchors: dict[str, Anchors], candidates, tracks, opts: LocateOptions,
                   result: dict[str, Placement], where: _Whereabouts, settings_s: np.ndarray,
                   clocks: list[int]) -> None:
    hits = [None] * len(s.paths)
    if tracks is not None and not s.known and s.offset_s is not None:  # a camera clock, its offset estimated
        if s.offset_support < 1 and s.offset_kind == "history":
            _, hits = _track_clock(s, tracks, clocks)
            settings_s = np.union1d(settings_s, [s.grid_min * 60.0])
        else:
            hits = _track_hits(s, s.offset_s, tracks)
    clock = [] if s.known else [s.device, s.grid_min, round(s.offset_s or 0.0, 1)]
    used = [clock, s.gps_device, bool(s.together)]
    for j, path in enumerate(s.paths):
        cand = candidates.get(path)
        hit = hits[j]
        if hit is not None:
            lat, lon, acc, text = hit
            acc += WALKING_MPS * s.clock_unc_s + (float(s.spread_m[j]) if s.spread_m is not None else 0.0)
            result[path] = _trusted(path, lat, lon, acc, "track", f"{text}; {s.detail}", cand, opts, used + [text])
            continue
        if not s.together:
            result[path] = _from_pixels_checked(cand, opts, s.note, used, where, float(s.times[j]), settings_s)
            continue
        g = anchors[s.gps_device]
        est = g.estimate(float(s.times[j]) - s.offset_s, opts.max_gap_s, opts.max_speed_kmh / 3.6, s.clock_unc_s)
        if est is None:
            result[path] = _from_pixels_checked(cand, opts, f"no photo with GPS within {format_gap(opts.max_gap_s)}",
                                                used, where, float(s.times[j]) - s.offset_s, np.zeros(1))
        else:
            if s.spread_m is not None and s.spread_m[j] > 0:
                est.accuracy_m += float(s.spread_m[j])
            result[path] = _from_time(est, s.detail, cand, opts, used)
