"""On which clock: per device and session, the offset of its clock to UTC, from the evidence of the library itself
(whose camera it was, at that offset, is :mod:`src.company`).

A *session* is a run of one device's photos (without their own GPS) with no pause over ``session_gap_s``. For a
device whose photos carry no UTC offset, the offsets time zones use are scored against each GPS device's photos:
``score = matched + LANDMARK_WEIGHT * (agree - disagree)``, where ``matched`` counts the session's photos with a GPS
photo within ``match_window_s`` at that offset and ``agree``/``disagree`` its confident landmarks near / far from
where the GPS device was. The *clear winner rule*: the best offset's score is at least ``min_support`` and beats
every offset 45 min or more away by at least ``max(min_margin, 25 % of the score)`` (a chance alignment of
unrelated shooting gives a broad plateau or several peaks, not one clear peak). A session without a clear winner
takes its trip's pooled offset, or its device's history (its nearest clear session's offset, or the GPS device's
local time for a camera set to local time) when that scores as well as the best; otherwise its photos get no place.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .geo import haversine_m
from .neighbours import Anchors, format_gap

if TYPE_CHECKING:
    pass

# The UTC offsets time zones use (IANA tz database, standard and summer time): a camera clock set by a person is
# on one of them; an offset between them (-10:45) would be a chance alignment, not a clock setting.
GRID_MIN = np.array([h * 60 for h in range(-12, 15)] + [-570, -210, 210, 270, 330, 345, 390, 525, 570, 630, 765],
                    dtype=np.int64)
GRID_MIN.sort()
SHIFTS_MIN = np.arange(-3 * 60, 3 * 60 + 1, 15)      # a known clock's chance level: the same photos shifted
RIVAL_MIN = 45                # offsets this far from the best count as a different hypothesis
LANDMARK_WEIGHT = 3           # a confident landmark where the GPS device was is worth 3 matched photos
AGREE_SLACK_M = 1_000.0
DISAGREE_SLACK_M = 25_000.0
HOME_CELL_DEG = 0.5
REFINED_CLOCK_UNC_S = 120.0  # an offset refined on 3+ matched photos; else half the match window
AMBIGUOUS_M = 10_000.0        # offsets that cannot be told apart may differ only where they put photos this close
SIMILAR_FAR_M = 100_000.0     # baseline pairs: the session's photos against the GPS device's photos from elsewhere
SIMILAR_SAMPLE = 16


@dataclass
class Session:
    device: str
    known: bool                              # every photo carries its UTC offset: ``times`` are instants
    paths: list[str]
    times: np.ndarray                        # instants (known) or device-clock seconds read as UTC
    offset_s: float | None = None            # clock - offset_s = instant; 0 for known sessions
    grid_min: int | None = None              # the grid offset chosen (minutes), for history
    clock_unc_s: float = 0.0
    gps_device: str | None = None
    together: bool = False
    away: bool = False
    corroborated: bool = False               # away and shown to be there (landmark, pixels, mapping, adjacency)
    interleave_ok: bool = False
    landmark_ok: bool = False
    similar_ok: bool = False
    similar_gain: float | None = None        # None: the pixels could not judge (no similarity, too few pairs)
    similar_se: float = 0.0                  # the gain's standard error
    strong_ok: bool = False                  # a clear offset/peak with most of its photos shot with the GPS device
    mapped: bool = False
    offset_support: float = 0.0              # photos matched at an estimated offset
    offset_kind: str = ""                    # clear | same place | trip | local | history
    spread_m: np.ndarray | None = None       # per photo: how far other plausible offsets put it (added to accuracy)
    detail: str = ""                         # appended to each placed photo's evidence
    note: str = ""                           # why its photos have no place
    scores: dict = field(default_factory=dict)   # gps device -> score per GRID_MIN (unknown clocks)


def build_sessions(photos: list[tuple[str, str, float, bool]], gap_s: float) -> list[Session]:
    """``(path, device, seconds, known)`` -> sessions: per device and clock kind, split at pauses over ``gap_s``."""
    groups: dict[tuple[str, bool], list[tuple[float, str]]] = defaultdict(list)
    for path, device, secs, known in photos:
        groups[(device, known)].append((secs, path))
    sessions = []
    for (device, known), rows in sorted(groups.items()):
        rows.sort()
        start = 0
        for i in range(1, len(rows) + 1):
            if i == len(rows) or rows[i][0] - rows[i - 1][0] > gap_s:
                part = rows[start:i]
                sessions.append(Session(device, known, [p for _, p in part], np.array([s for s, _ in part])))
                start = i
    return sessions


def landmark_counts(times: np.ndarray, lm: list[tuple[int, float, float, float]], g: Anchors,
                     offsets_s: np.ndarray, max_gap_s: float, max_speed_mps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per offset: how many of the session's confident landmarks lie where ``g`` was (agree) / far from it."""
    if not lm or not len(g):
        return np.zeros(len(offsets_s)), np.zeros(len(offsets_s))
    cols = np.array([c for c, _, _, _ in lm])
    la, lo, rad = (np.array([row[k] for row in lm]) for k in (1, 2, 3))
    idx, gap = g.nearest(times[cols][None, :] - offsets_s[:, None])
    dist = haversine_m(g.lat[idx], g.lon[idx], la[None, :], lo[None, :])
    near = gap <= max_gap_s
    agree = near & (dist <= rad + AGREE_SLACK_M + gap * 2.0)
    disagree = near & (dist > rad + DISAGREE_SLACK_M + gap * max_speed_mps)
    return agree.sum(1).astype(float), disagree.sum(1).astype(float)


def offset_scores(times, lm, g, offsets_s, opts) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per offset: (score, matched, agree, disagree)."""
    _, gap = g.nearest(times[None, :] - offsets_s[:, None])
    matched = (gap <= opts.match_window_s).sum(1).astype(float)
    agree, disagree = landmark_counts(times, lm, g, offsets_s, opts.max_gap_s, opts.max_speed_kmh / 3.6)
    return matched + LANDMARK_WEIGHT * (agree - disagree), matched, agree, disagree


def clear_peak(offsets_min: np.ndarray, score: np.ndarray, best: int, opts) -> tuple[bool, float]:
    """The clear winner rule for ``best`` (an index); returns (clear, best score of the rivals)."""
    far = np.abs(offsets_min - offsets_min[best]) >= RIVAL_MIN
    rival = float(score[far].max()) if far.any() else 0.0
    top = float(score[best])
    return top >= opts.min_support and top - max(rival, 0.0) >= max(opts.min_margin, 0.25 * top), rival


def fmt_offset(minutes: float) -> str:
    """A UTC offset in minutes as people write it: ``UTC+05:30``."""
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(round(minutes))
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _matches(pattern: str, device: str) -> bool:
    return pattern.strip().lower() in device.lower()


def gps_candidates(session: Session, anchors: dict[str, Anchors], opts) -> tuple[list[Anchors], bool]:
    """The GPS devices this session may have been with, and whether the user's mapping named them."""
    for pattern, gps_pattern in (opts.together or {}).items():
        if _matches(pattern, session.device):
            return [a for d, a in sorted(anchors.items()) if _matches(gps_pattern, d)], True
    if session.device in anchors:  # a GPS device's own photos without GPS: it was with itself
        return [anchors[session.device]], True
    return [a for _, a in sorted(anchors.items())], False


def _spread(times: np.ndarray, g: Anchors, best_s: float, others_s: np.ndarray, max_gap_s: float) -> np.ndarray:
    """Per photo: how far its place at offset ``best_s`` is from its places at ``others_s`` (0 where one of them
    has no GPS photo within ``max_gap_s``: no place is not a wrong place)."""
    idx_b, gap_b = g.nearest(times - best_s)
    if not len(others_s):
        return np.zeros(len(times))
    idx_o, gap_o = g.nearest(times[None, :] - others_s[:, None])
    d = haversine_m(g.lat[idx_b][None, :], g.lon[idx_b][None, :], g.lat[idx_o], g.lon[idx_o])
    return np.where((gap_b[None, :] <= max_gap_s) & (gap_o <= max_gap_s), d, 0.0).max(0)


def _local_offset(times: np.ndarray, g: Anchors) -> float:
    """The time zone ``g`` was on during the hours a camera clock reading ``times`` can mean (its most frequent
    offset there), the tie-break between offsets that fit equally: cameras are set to local time. 0 if unknown."""
    if not len(times) or not len(g):
        return 0.0
    lo, hi = np.searchsorted(g.secs, [times.min() - 14 * 3600.0, times.max() + 12 * 3600.0])
    known = g.offset_min[lo:hi][~np.isnan(g.offset_min[lo:hi])]
    if not len(known):
        return 0.0
    values, counts = np.unique(known, return_counts=True)
    return float(values[np.argmax(counts)])


UNUSUAL_SUPPORT = 2  # times min_support: what a clock offset no zone of the GPS device's explains must show


def _usual(offset_min: int, g: Anchors) -> bool:
    """Whether a camera clock on ``offset_min`` is one a person sets: a zone the GPS device was in at some time
    (local time now, home time, an earlier trip's), or an hour off one (summer time not switched)."""
    zones = g.offset_min[~np.isnan(g.offset_min)]
    if not len(zones):
        return True  # nothing known of its zones: nothing unusual
    d = np.abs(zones - offset_min)
    return bool(np.any((d < 1) | (np.abs(d - 60) < 1)))


def _accept(score: np.ndarray, plain: np.ndarray, times: np.ndarray, g: Anchors,
            opts) -> tuple[int, str, np.ndarray | None]:
    """The best grid offset, how it was accepted ("clear", "same place" or "" = not) and the photos' spread.

    "clear": the clear winner rule on the score, or on ``plain`` (matched photos less disagreeing landmarks: a
    landmark that agrees at many offsets, the phone staying at it for hours, does not blur a sharp peak).
    "same place": no clear winner, but every offset scoring within the margin of the best puts each photo within
    ``AMBIGUOUS_M`` of where the best puts it (the phone stayed around one place for those hours): the offset is
    unsure, the place is not; the spread is added to each photo's accuracy."""
    top = float(score.max())
    ties = np.flatnonzero(score == top)
    best = int(ties[np.argmin(np.abs(GRID_MIN[ties] - _local_offset(times, g)))])
    if clear_peak(GRID_MIN, score, best, opts)[0] or clear_peak(GRID_MIN, plain, best, opts)[0]:
        if _usual(GRID_MIN[best], g) or top >= UNUSUAL_SUPPORT * opts.min_support:
            return best, "clear", np.zeros(len(times))
        return best, "", None  # a zone the owner's GPS device was never in, on a few photos: a chance alignment
    if top < opts.min_support:
        return best, "", None
    rivals = np.flatnonzero(score >= top - max(opts.min_margin, 0.25 * top))
    # the place does not depend on which of them it is, but the clock goes on as the device's history: of the
    # offsets that fit about as well, the one a person sets (the GPS device's local time, else a zone it used)
    usual = [int(r) for r in rivals if _usual(GRID_MIN[r], g)]
    if usual:
        local = _local_offset(times, g)
        best = min(usual, key=lambda r: (abs(GRID_MIN[r] - local), -float(score[r])))
    rivals = rivals[rivals != best]
    spread = _spread(times, g, GRID_MIN[best] * 60.0, GRID_MIN[rivals] * 60.0, opts.max_gap_s)
    return (best, "same place", spread) if float(spread.max()) <= AMBIGUOUS_M else (best, "", None)


def estimate_offset(s: Session, lm, cands: list[Anchors], opts) -> None:
    """Pass 1: per GPS device, the best offset if accepted (:func:`_accept`); the best-scoring accepted one wins."""
    offsets_s = GRID_MIN * 60.0
    best_pick = None
    for g in cands:
        score, matched, _, disagree = offset_scores(s.times, lm, g, offsets_s, opts)
        plain = matched - LANDMARK_WEIGHT * disagree
        s.scores[g.device] = (score, matched, plain)
        best, how, spread = _accept(score, plain, s.times, g, opts)
        if how and (best_pick is None or score[best] > best_pick[0]):
            best_pick = (float(score[best]), g, best, matched[best], how, spread)
    if best_pick is not None:
        _adopt(s, best_pick, opts)


def _adopt(s: Session, pick, opts) -> None:
    _, g, best, n_matched, how, spread = pick
    set_offset(s, g, int(GRID_MIN[best]), opts)
    s.offset_support, s.offset_kind, s.spread_m = float(n_matched), how, spread
    s.detail = (f"{s.device} clock {fmt_offset(s.grid_min)} estimated from {n_matched:.0f} of "
                    f"{len(s.paths)} photos within {format_gap(opts.match_window_s)} of {g.device}'s"
                    + {"clear": "", "local": f" at its local time (the only zone that matches {n_matched:.0f})"}
                    .get(how, " (other offsets put them at the same place)"))


LOCAL_MIN_MATCHED = 2  # photos that must match at the GPS device's local time when too few for the clear rule


def offset_from_local_time(sessions: list[Session], cands_by_session, opts) -> None:
    """Pass 1c (after its trip and its history): a session still without an offset takes
    :func:`_local_time_pick`'s, if any."""
    for i, s in enumerate(sessions):
        if not s.known and s.grid_min is None and s.scores:
            pick = _local_time_pick(s, cands_by_session[i], opts)
            if pick is not None:
                _adopt(s, pick, opts)


def _local_time_pick(s: Session, cands: list[Anchors], opts):
    """Too few photos for the clear winner rule (2 or 3, say), yet every one of them shot within the match window
    of a GPS device's photo at that device's local time, the offset a person sets a camera to, and no offset
    ``RIVAL_MIN`` or more away matching as many and no landmark disagreeing: ``(score, g, index, matched,
    "local", spread)``, else ``None``. The prior (cameras are set to local time) stands in for the support; whether
    the device was with the GPS device is still decided in :mod:`src.company` (at home this is enough, away not)."""
    for g in cands:
        score, matched, plain = s.scores[g.device]
        hit = np.flatnonzero(GRID_MIN == _local_offset(s.times, g))
        if not len(hit):
            continue
        k = int(hit[0])
        far = np.abs(GRID_MIN - GRID_MIN[k]) >= RIVAL_MIN
        if (matched[k] >= LOCAL_MIN_MATCHED and matched[k] == len(s.times) and plain[k] == matched[k]
                and float(matched[far].max()) < matched[k]):
            return float(score[k]), g, k, matched[k], "local", np.zeros(len(s.times))
    return None


def pool_trips(sessions: list[Session], cands_by_session, opts) -> None:
    """Pass 1b: a device's sessions without an accepted offset, pooled with its sessions within ``adjacent_gap_s``
    (one trip, one clock setting): the pooled scores decide, for each session whose own scores do not prefer
    another offset."""
    by_device: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sessions):
        if not s.known and s.scores:
            by_device[s.device].append(i)
    for indices in by_device.values():
        indices.sort(key=lambda i: float(sessions[i].times[0]))
        groups, current = [], [indices[0]]
        for i in indices[1:]:
            if float(sessions[i].times[0]) - float(sessions[current[-1]].times[-1]) <= opts.adjacent_gap_s:
                current.append(i)
            else:
                groups.append(current)
                current = [i]
        groups.append(current)
        for group in groups:
            members = [sessions[i] for i in group]
            if len(members) < 2 or all(m.offset_s is not None for m in members):
                continue
            for g in cands_by_session[group[0]]:
                pooled = sum(m.scores[g.device][0] for m in members)
                pooled_plain = sum(m.scores[g.device][2] for m in members)
                times = np.concatenate([m.times for m in members])
                best, how, spread = _accept(pooled, pooled_plain, times, g, opts)
                if not how:
                    continue
                start = 0
                for m in members:
                    own, matched, _ = m.scores[g.device]
                    part = spread[start:start + len(m.times)]
                    start += len(m.times)
                    if m.offset_s is None and own[best] >= own.max() - max(opts.min_margin, 0.25 * own.max()):
                        set_offset(m, g, int(GRID_MIN[best]), opts)
                        m.offset_support, m.spread_m = float(matched[best]), part
                        m.offset_kind = "trip" if how == "clear" else "trip, same place"
                        n_matched = sum(float(x.scores[g.device][1][best]) for x in members)
                        m.detail = (f"{m.device} clock {fmt_offset(m.grid_min)} estimated over its {len(members)} "
                                    f"sessions of this trip ({n_matched:.0f} of {len(times)} photos within "
                                    f"{format_gap(opts.match_window_s)} of {g.device}'s)")
                break


CONSISTENT_RESIDUAL_S = 45.0  # the matched photos' time residuals agree this closely: a measured clock error


def set_offset(s: Session, g: Anchors, grid_min: int, opts) -> None:
    """Adopt a grid offset, refined by the median time residual of the matched photos (a clock minutes off)."""
    s.grid_min, s.gps_device, s.clock_unc_s = grid_min, g.device, opts.match_window_s / 2
    offset = grid_min * 60.0
    idx, gap = g.nearest(s.times - offset)
    ok = gap <= opts.match_window_s
    if ok.sum() >= 3:
        residuals = g.secs[idx[ok]] - (s.times[ok] - offset)
        residual = float(np.median(residuals))
        # only pairs shot at the same moments say how far the clock is off: residuals of interleaved shooting
        # scatter over the gaps between the GPS photos and their median is no measurement (it would look precise)
        consistent = float(np.median(np.abs(residuals - residual))) <= CONSISTENT_RESIDUAL_S
        if abs(residual) <= 450 and consistent:
            offset -= residual
            s.clock_unc_s = REFINED_CLOCK_UNC_S
    s.offset_s = offset


def offset_from_history(sessions: list[Session], cands_by_session, opts) -> None:
    """Pass 2: an unclear session takes its device's offset from the nearest clear session when that offset scores
    as well as the best one (a camera keeps its clock until someone sets it; ties go to its history)."""
    clear_by_device: dict[str, list[Session]] = defaultdict(list)
    for s in sessions:
        if not s.known and s.offset_kind in ("clear", "local"):
            clear_by_device[s.device].append(s)
    for i, s in enumerate(sessions):
        if s.known or not clear_by_device.get(s.device) or (s.grid_min is not None and s.offset_kind != "same place"):
            continue
        mid = float(np.median(s.times))
        ref = min(clear_by_device[s.device], key=lambda o: abs(float(np.median(o.times)) - mid))
        k = int(np.flatnonzero(GRID_MIN == ref.grid_min)[0])
        if s.grid_min is not None:
            # "same place": among offsets that fit about as well, the clock the device is known to have is no
            # longer a guess; its matches there count as its history's (the place was not in doubt)
            score, matched, _ = s.scores[s.gps_device]
            if s.grid_min == ref.grid_min and matched[k] >= 1:
                s.offset_kind = "history"
                s.detail += f"; its clock as in its session of {os.path.basename(ref.paths[0])}"
            continue
        mid_instant = np.array([mid - ref.grid_min * 60.0])
        for g in sorted(cands_by_session[i], key=lambda a: (a.device != ref.gps_device, -s.scores[a.device][1][k],
                                                            float(a.nearest(mid_instant)[1][0]))):
            score, matched, _ = s.scores[g.device]
            if score[k] >= float(score.max()):
                set_offset(s, g, ref.grid_min, opts)
                s.offset_support, s.offset_kind = float(matched[k]), "history"
                s.detail = (f"{s.device} clock {fmt_offset(s.grid_min)} as in its session of "
                            f"{os.path.basename(ref.paths[0])} ({matched[k]:.0f} of {len(s.paths)} photos within "
                            f"{format_gap(opts.match_window_s)} of {g.device}'s)")
                break
        if s.grid_min is not None or ref.gps_device not in {g.device for g in cands_by_session[i]}:
            continue
        # its habit: a clock that was on the GPS device's local time in its clear sessions (set to local time,
        # summer time included) is on it now too, when that offset fits as well as any other
        g_ref = next(g for g in cands_by_session[i] if g.device == ref.gps_device)
        if ref.grid_min != _local_offset(ref.times, g_ref):
            continue
        local = _local_offset(s.times, g_ref)
        hit = np.flatnonzero(GRID_MIN == local)
        score, matched, _ = s.scores[g_ref.device]
        if len(hit) and matched[hit[0]] >= 1 and score[hit[0]] >= float(score.max()):
            set_offset(s, g_ref, int(local), opts)
            s.offset_support, s.offset_kind = float(matched[hit[0]]), "history"
            s.detail = (f"{s.device} clock {fmt_offset(s.grid_min)}: on {g_ref.device}'s local time, as in its "
                        f"session of {os.path.basename(ref.paths[0])} ({matched[hit[0]]:.0f} of {len(s.paths)} photos "
                        f"within {format_gap(opts.match_window_s)} of {g_ref.device}'s)")


def _clocks_around(s: Session, sessions: list[Session], matched_only: bool) -> list[int]:
    """The clocks (grid minutes) of its device's nearest sessions before and after ``s`` that have one (and that
    some GPS photo matched, if ``matched_only``)."""
    mine = [o for o in sessions if o is not s and o.device == s.device and not o.known and o.grid_min is not None
            and (o.offset_support >= 1 or not matched_only)]
    before = [o for o in mine if o.times[-1] < s.times[0]]
    after = [o for o in mine if o.times[0] > s.times[-1]]
    return ([max(before, key=lambda o: float(o.times[-1])).grid_min] if before else []) + \
        ([min(after, key=lambda o: float(o.times[0])).grid_min] if after else [])


def clock_settings_s(s: Session, sessions: list[Session], anchors: dict[str, Anchors]) -> np.ndarray:
    """The offsets (seconds) the clock of ``s`` may have been on, for asking whether its photos could show a far
    landmark: ``[0]`` for instants; else its own estimated offset, those of its device's nearest sessions before and
    after it that have one (a camera keeps its clock until someone sets it), and the zones the GPS devices were on
    during its hours (someone set it on arrival). Every zone only when none of these is known: a clock that none of
    them explains is a guess, and under a guess a landmark the whereabouts rule out would slip through."""
    if s.known:
        return np.zeros(1)
    found = ({s.grid_min} if s.grid_min is not None else set()) | set(_clocks_around(s, sessions, False))
    for g in anchors.values():
        lo, hi = np.searchsorted(g.secs, [s.times.min() - 14 * 3600.0, s.times.max() + 12 * 3600.0])
        zones = g.offset_min[lo:hi]
        found.update(int(z) for z in np.unique(zones[~np.isnan(zones)]))
    return np.array(sorted(found), np.float64) * 60.0 if found else GRID_MIN * 60.0


def device_clocks(s: Session, sessions: list[Session]) -> list[int]:
    """The clocks of the device's nearest sessions before and after ``s`` that a GPS photo matched: between the
    two, someone set it once at most, so the clock of ``s`` is one of them (or its own)."""
    return _clocks_around(s, sessions, True)
