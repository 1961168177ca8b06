"""The location engine (src/locate.py, src/clocks.py, src/neighbours.py) on hand-made timelines.

Pure Python: a library is a dict of PhotoEvidence records; "truth" is where each simulated photo was taken.
"""
from __future__ import annotations

import random
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from src.evidence import PhotoEvidence
from src.landmarks import landmark_radius_m, load_landmarks
from src.locate import LandmarkCandidate, LocateOptions, candidate_for, locate_library
from src.geo import distance_m

PARIS = (48.8566, 2.3522)
EIFFEL = (48.8584, 2.2945)
TOKYO = (35.6762, 139.6503)
AGRA = (27.1751, 78.0421)       # the Taj Mahal
LYON = (45.7640, 4.8357)
PHONE, CANON, NIKON = "Apple iPhone 12", "Canon EOS 80D", "Nikon D750"
DAY = datetime(2026, 3, 2)      # a Monday; Paris is on UTC+01:00 until the end of March


def ev(path, local, offset=None, gps=None, device=PHONE):
    return PhotoEvidence(path, time_local=local, utc_offset_min=offset, gps=gps, device=device)


def cand(key, where, confidence=0.9, threshold=0.5, radius=2000.0, name=None):
    return LandmarkCandidate(key, name or key.split(".")[-1].replace("_", " "), where[0] if where else None,
                             where[1] if where else None, radius, confidence, threshold)


def near(place, rng, km=2.0):
    """A point within about ``km`` of ``place``."""
    return (place[0] + rng.uniform(-1, 1) * km / 111.0, place[1] + rng.uniform(-1, 1) * km / 80.0)


class Library:
    """A simulated library: photos with their evidence, the pixels' candidates, and where each was taken."""

    def __init__(self, seed=0):
        self.evidence: dict[str, PhotoEvidence] = {}
        self.candidates: dict[str, LandmarkCandidate | None] = {}
        self.truth: dict[str, tuple[float, float]] = {}
        self.rng = random.Random(seed)
        self.n = 0

    def add(self, device, utc, where, clock_offset_min, writes_offset, gps, landmark=None):
        self.n += 1
        path = f"/lib/{device.split()[0].lower()}/IMG_{self.n:05d}.JPG"
        local = utc + timedelta(minutes=clock_offset_min)
        self.evidence[path] = ev(path, local, clock_offset_min if writes_offset else None,
                                 where if gps else None, device)
        self.truth[path] = where
        self.candidates[path] = landmark
        return path

    def day(self, date, place, zone_min, camera=CANON, camera_clock_min=None, camera_writes_offset=False,
            scenes=6, phone=True, phone_shots=3, camera_shots=2, spread_km=3.0, landmark=None):
        """One day of shooting at ``place``: scenes from 9:00 local, the phone (GPS) and a camera at each scene."""
        t = date + timedelta(hours=9) - timedelta(minutes=zone_min)   # 9:00 local, in UTC
        clock = zone_min if camera_clock_min is None else camera_clock_min
        for _ in range(scenes):
            t += timedelta(minutes=self.rng.randint(40, 110))
            where = near(place, self.rng, spread_km)
            for _ in range(phone_shots if phone else 0):
                self.add(PHONE, t + timedelta(seconds=self.rng.randint(0, 360)), near(where, self.rng, 0.05),
                         zone_min, True, True)
            for _ in range(camera_shots if camera else 0):
                self.add(camera, t + timedelta(seconds=self.rng.randint(0, 360)), near(where, self.rng, 0.05),
                         clock, camera_writes_offset, False, landmark)

    def locate(self, **kw):
        return locate_library(self.evidence, self.candidates, **kw)

    def of(self, device):
        return [p for p, e in self.evidence.items() if e.device == device and e.gps is None]

    def error_km(self, result, path):
        r = result[path]
        return distance_m(r.lat, r.lon, *self.truth[path]) / 1000.0


def home_days(lib, n=8, start=DAY, **kw):
    for d in range(n):
        lib.day(start + timedelta(days=d), PARIS, 60, **kw)


# --- time neighbours: interpolation, nearest, gaps, instants ---------------------------------------------------

def test_interpolated_between_the_neighbours_with_its_accuracy_and_evidence():
    a, b = PARIS, (PARIS[0], PARIS[1] + 0.0137)    # 1.0 km east
    lib = {"/p/A.JPG": ev("/p/A.JPG", DAY.replace(hour=10), 60, a),
           "/p/B.JPG": ev("/p/B.JPG", DAY.replace(hour=10, minute=20), 60, b),
           "/p/X.JPG": ev("/p/X.JPG", DAY.replace(hour=10, minute=5), 60)}
    r = locate_library(lib, {})
    x = r["/p/X.JPG"]
    assert x.source == "time" and x.lat == pytest.approx(a[0]) and x.lon == pytest.approx(a[1] + 0.0137 / 4)
    assert x.evidence == "between A.JPG (5 min before) and B.JPG (15 min after)"
    # 1 km in 20 min (3 km/h) is slower than walking: 20 m GPS + 5 km/h for the 5 minutes to the nearer neighbour
    assert x.accuracy_m == pytest.approx(20 + 5 / 3.6 * 300, rel=1e-6)
    assert r["/p/A.JPG"].source == "camera" and r["/p/A.JPG"].evidence == "camera GPS"


def test_instants_not_wall_clocks_across_time_zones():
    """The phone's photos carry their offsets: a photo is matched on its instant, not its wall-clock string."""
    lib = {"/p/paris.JPG": ev("/p/paris.JPG", DAY.replace(hour=10), 60, PARIS),
           "/p/tokyo.JPG": ev("/p/tokyo.JPG", DAY.replace(day=4, hour=10), 540, TOKYO),
           # 10:30 in Tokyo (01:30 UTC): 30 min after the Tokyo photo
           "/p/t2.JPG": ev("/p/t2.JPG", DAY.replace(day=4, hour=10, minute=30), 540),
           # 10:05 wall clock on the Paris day, but at +09:00: 01:05 UTC, 8 h before the Paris photo
           "/p/odd.JPG": ev("/p/odd.JPG", DAY.replace(hour=10, minute=5), 540)}
    r = locate_library(lib, {})
    assert r["/p/t2.JPG"].source == "time" and r["/p/t2.JPG"].evidence == "tokyo.JPG, 30 min earlier"
    assert (r["/p/t2.JPG"].lat, r["/p/t2.JPG"].lon) == TOKYO
    assert r["/p/odd.JPG"].source == "none" and r["/p/odd.JPG"].lat is None
    assert r["/p/odd.JPG"].note == "no photo with GPS within 1 h"


def test_gap_over_the_maximum_gives_no_place_and_the_option_moves_it():
    lib = {"/p/A.JPG": ev("/p/A.JPG", DAY.replace(hour=10), 60, PARIS),
           "/p/X.JPG": ev("/p/X.JPG", DAY.replace(hour=13), 60)}
    assert locate_library(lib, {})["/p/X.JPG"].source == "none"
    x = locate_library(lib, {}, options=LocateOptions(max_gap_s=4 * 3600))["/p/X.JPG"]
    assert x.source == "time" and x.evidence == "A.JPG, 3 h earlier"
    assert x.accuracy_m == pytest.approx(20 + 5 / 3.6 * 3 * 3600)   # 15 km: walking for 3 h


def test_identical_timestamps():
    t = DAY.replace(hour=10)
    a2 = (PARIS[0] + 0.0009, PARIS[1])                                # 100 m north
    lib = {"/p/A.JPG": ev("/p/A.JPG", t, 60, PARIS), "/p/A2.JPG": ev("/p/A2.JPG", t, 60, a2),
           "/p/X.JPG": ev("/p/X.JPG", t, 60), "/p/Y.JPG": ev("/p/Y.JPG", t, 60)}
    r = locate_library(lib, {})
    for p in ("/p/X.JPG", "/p/Y.JPG"):
        assert r[p].source == "time" and r[p].evidence == "A.JPG, A2.JPG, same time"
        assert r[p].lat == pytest.approx(PARIS[0] + 0.00045) and 20 + 45 < r[p].accuracy_m < 20 + 60
    assert r["/p/X.JPG"].inputs == r["/p/Y.JPG"].inputs


def test_implausible_speed_takes_the_nearest_not_a_point_between():
    """Paris at 10:00 and New York an hour later (faster than ground travel): a photo at 10:10 is at Paris (the
    nearer, within 15 min); one at 10:30 could be on either side of a flight at an unknown time: no place."""
    ny = (40.7128, -74.0060)
    lib = {"/p/A.JPG": ev("/p/A.JPG", DAY.replace(hour=10), 60, PARIS),
           "/p/B.JPG": ev("/p/B.JPG", DAY.replace(hour=5), -300, ny),      # 10:00 UTC = 11:00 Paris
           "/p/X.JPG": ev("/p/X.JPG", DAY.replace(hour=10, minute=10), 60),
           "/p/Y.JPG": ev("/p/Y.JPG", DAY.replace(hour=10, minute=30), 60)}
    r = locate_library(lib, {})
    x = r["/p/X.JPG"]
    assert x.source == "time" and (x.lat, x.lon) == PARIS and x.evidence == "A.JPG, 10 min earlier"
    assert r["/p/Y.JPG"].source == "none"
    # after the last photo of the day (nothing on the other side), the nearest within the max gap counts
    del lib["/p/B.JPG"]
    assert locate_library(lib, {})["/p/Y.JPG"].evidence == "A.JPG, 30 min earlier"
    lib["/p/B.JPG"] = ev("/p/B.JPG", DAY.replace(hour=5), -300, ny)
    lib["/p/X.JPG"] = ev("/p/X.JPG", DAY.replace(hour=10, minute=20), 60)
    # the same pair 10 km apart is a plausible drive: interpolated
    lib["/p/B.JPG"] = ev("/p/B.JPG", DAY.replace(hour=11), 60, (PARIS[0] + 0.09, PARIS[1]))
    x = locate_library(lib, {})["/p/X.JPG"]
    assert x.evidence.startswith("between") and x.lat == pytest.approx(PARIS[0] + 0.03)
    # the accuracy follows the speed the neighbours show (10 km/h), not walking pace
    assert x.accuracy_m == pytest.approx(20 + 10_000 / 3600 * 1200, rel=0.01)


# --- camera clocks -----------------------------------------------------------------------------------------------

def test_camera_clock_offset_estimated_from_overlap_at_home():
    lib = Library(1)
    home_days(lib)
    r = lib.locate()
    cams = lib.of(CANON)
    assert all(r[p].source == "time" for p in cams)
    assert all("Canon EOS 80D clock UTC+01:00 estimated" in r[p].evidence for p in cams)
    assert max(lib.error_km(r, p) for p in cams) < 1.0
    # honest and useful: every photo within its accuracy radius, and the radius street-scale
    assert all(lib.error_km(r, p) * 1000 <= r[p].accuracy_m < 2000 for p in cams)


def test_camera_left_on_home_time_on_a_trip_gets_the_right_offset():
    """In India (+05:30) the camera stays on Paris time (+01:00): 4.5 h off local time. A Taj Mahal photo from the
    camera corroborates that it was there; the offset is its clock's, +01:00."""
    lib = Library(2)
    home_days(lib)
    taj = cand("21.Taj_Mahal", AGRA)
    for d in range(3):  # days 2 and 3: one scene, two camera photos (too few to show anything on their own)
        lib.day(DAY + timedelta(days=10 + d), AGRA, 330, camera_clock_min=60, spread_km=1.0,
                landmark=taj if d == 0 else None, scenes=6 if d == 0 else 1)
    r = lib.locate()
    trip = [p for p in lib.of(CANON) if lib.evidence[p].time_local >= DAY + timedelta(days=10)]
    assert all(r[p].source in ("time", "landmark+time") for p in trip), [r[p].note for p in trip]
    assert all("UTC+01:00" in r[p].evidence for p in trip)
    assert max(lib.error_km(r, p) for p in trip) < 2.5
    assert any(r[p].source == "landmark+time" and r[p].landmark_key == "21.Taj_Mahal" for p in trip)
    # days 2 and 3 show no landmark: placed as the same trip as day 1, whose Taj Mahal photo showed it was there
    # (or, where its clock lines up sharply with the phone again, as the camera that travelled with it on day 1)
    later = [p for p in trip if lib.evidence[p].time_local >= DAY + timedelta(days=11)]
    assert len(later) == 4 and all("same trip as its session of" in r[p].evidence or
                                   "travelled with Apple iPhone 12 before" in r[p].evidence for p in later)
    # a camera 9 h off (Tokyo, camera on Paris time) alike, corroborated by the pixels this time
    lib2 = Library(3)
    home_days(lib2)
    for d in range(2):
        lib2.day(DAY + timedelta(days=10 + d), TOKYO, 540, camera_clock_min=60)
    r2 = lib2.locate(similarity=_same_scene_similarity(lib2))
    trip2 = [p for p in lib2.of(CANON) if lib2.evidence[p].time_local >= DAY + timedelta(days=10)]
    assert all(r2[p].source == "time" for p in trip2) and max(lib2.error_km(r2, p) for p in trip2) < 2.5
    assert all("UTC+01:00" in r2[p].evidence for p in trip2)
    # without the pixels, shooting with the phone at nearly every photo (a clear peak, 12 of 12) places it abroad
    r3 = lib2.locate()
    assert all(r3[p].source == "time" for p in trip2) and max(lib2.error_km(r3, p) for p in trip2) < 2.5
    # pixels that find its photos no more like the phone's there than like the phone's at home: no place
    r4 = lib2.locate(similarity=lambda a, b: 0.3)
    assert all(r4[p].source == "none" and "away from home" in r4[p].note for p in trip2)


def _same_scene_similarity(lib, km=0.5):
    """Photos taken within ``km`` of each other look alike (0.8), others not (0.2): the pixels' evidence."""
    def sim(a, b):
        return 0.8 if distance_m(*lib.truth[a], *lib.truth[b]) < km * 1000 else 0.2
    return sim


def test_ambiguous_overlap_leaves_the_camera_without_a_place():
    """The phone shoots every 15 minutes on a road trip; the camera's photos land on phone photos at every offset
    of the grid: no clear winner, so no place (never a confident wrong one)."""
    lib = Library(4)
    start = DAY + timedelta(hours=7)
    for k in range(48):      # 12 h, driving from Paris towards Lyon at about 40 km/h
        f = k / 47
        where = (PARIS[0] + f * (LYON[0] - PARIS[0]), PARIS[1] + f * (LYON[1] - PARIS[1]))
        lib.add(PHONE, start + timedelta(minutes=15 * k), where, 60, True, True)
    for k in range(0, 48, 7):
        lib.add(CANON, start + timedelta(minutes=15 * k), lib.truth[list(lib.truth)[k]], 60, False, False)
    r = lib.locate()
    for p in lib.of(CANON):
        assert r[p].lat is None and "clock offset unknown" in r[p].note


@pytest.mark.parametrize("writes_offset", [False, True])
def test_history_gives_a_weak_session_its_devices_offset(writes_offset):
    """Two photos are too few to show a clock offset or that two devices were together; the device's other
    sessions (same offset; with the phone at home) decide."""
    lib = Library(5)
    home_days(lib, 3, camera_writes_offset=writes_offset)
    # a short evening session 2 days later: two camera photos, each within minutes of a phone photo
    t = DAY + timedelta(days=5, hours=19)
    for k in range(2):
        where = near(PARIS, lib.rng)
        lib.add(PHONE, t + timedelta(minutes=40 * k), where, 60, True, True)
        lib.add(CANON, t + timedelta(minutes=40 * k + 2), near(where, lib.rng, 0.05), 60, writes_offset, False)
    r = lib.locate()
    late = [p for p in lib.of(CANON) if lib.evidence[p].time_local > t]
    assert len(late) == 2 and all(r[p].source == "time" and "as in its session of" in r[p].evidence for p in late)
    assert max(lib.error_km(r, p) for p in late) < 0.5


# --- whose camera ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("writes_offset", [False, True])
def test_second_persons_camera_at_home_gets_no_place(writes_offset):
    """The phone goes to Tokyo; a Nikon stays in Paris shooting at the same instants (a chance overlap), with no
    landmark and no similar scenes. At home, on the days both were there, it is placed."""
    lib = Library(6)
    home_days(lib, camera=NIKON, camera_writes_offset=writes_offset)
    for d in range(3):
        date = DAY + timedelta(days=10 + d)
        t = date + timedelta(hours=9) - timedelta(minutes=540)
        for _ in range(6):
            t += timedelta(minutes=lib.rng.randint(40, 110))
            tokyo, paris = near(TOKYO, lib.rng), near(PARIS, lib.rng)
            for _ in range(3):
                lib.add(PHONE, t + timedelta(seconds=lib.rng.randint(0, 360)), tokyo, 540, True, True)
            for _ in range(2):
                lib.add(NIKON, t + timedelta(seconds=lib.rng.randint(0, 360)), paris, 60, writes_offset, False)
    r = lib.locate(similarity=_same_scene_similarity(lib))
    trip = [p for p in lib.of(NIKON) if lib.evidence[p].time_local >= DAY + timedelta(days=10)]
    home = [p for p in lib.of(NIKON) if p not in trip]
    assert all(r[p].lat is None and "not shown to be with Apple iPhone 12" in r[p].note for p in trip)
    assert all(r[p].source == "time" for p in home) and max(lib.error_km(r, p) for p in home) < 1.0
    # the user says the Nikon was with the phone: that overrides (and is what the user asked for)
    forced = lib.locate(options=LocateOptions(together={"Nikon D750": "iPhone 12"}))
    assert all(forced[p].source == "time" for p in trip)


def test_together_mapping_places_a_camera_the_evidence_alone_would_not():
    lib = Library(7)
    home_days(lib, 3)
    for d in range(2):
        lib.day(DAY + timedelta(days=10 + d), TOKYO, 540, camera_clock_min=540)
    trip = [p for p in lib.of(CANON) if lib.evidence[p].time_local >= DAY + timedelta(days=10)]
    unlike = {"similarity": lambda a, b: 0.3}    # the pixels see no overlap of scenes
    assert all(lib.locate(**unlike)[p].source == "none" for p in trip)
    r = lib.locate(options=LocateOptions(together={"canon eos 80d": "iPhone 12"}), **unlike)
    assert all(r[p].source == "time" for p in trip) and max(lib.error_km(r, p) for p in trip) < 2.5
    # a mapping to a device without GPS photos: no place, saying so
    r = lib.locate(options=LocateOptions(together={"Canon": "Pixel 8"}))
    assert all(r[p].source == "none" and r[p].note == "no GPS photos from the device it was with" for p in trip)


# --- landmarks with the evidence ------------------------------------------------------------------------------------

def test_landmark_far_from_the_photos_own_gps_is_withheld_and_near_it_named():
    lib = {"/p/A.JPG": ev("/p/A.JPG", DAY.replace(hour=10), 60, PARIS),
           "/p/B.JPG": ev("/p/B.JPG", DAY.replace(hour=11), 60, (EIFFEL[0] + 0.005, EIFFEL[1]))}
    cands = {"/p/A.JPG": cand("21.Taj_Mahal", AGRA, 0.95), "/p/B.JPG": cand("16.Eiffel_Tower", EIFFEL, 0.4)}
    r = locate_library(lib, cands)
    a, b = r["/p/A.JPG"], r["/p/B.JPG"]
    assert a.source == "camera" and (a.lat, a.lon) == PARIS and a.landmark_key is None
    assert a.note == "landmark withheld: pixels say Taj Mahal (0.95) but the photo's own GPS puts it 6,755 km from it"
    assert b.source == "camera" and b.landmark_key is None            # 0.4 is below the model's threshold
    r = locate_library(lib, cands, options=LocateOptions(agree_threshold=0.3))
    assert r["/p/B.JPG"].landmark_key == "16.Eiffel_Tower"             # agreement lowers the bar
    assert r["/p/A.JPG"].landmark_key is None and (r["/p/A.JPG"].lat, r["/p/A.JPG"].lon) == PARIS
    # the radius decides: a national park 30 km away is still the park
    park = (46.8529, -121.7604)
    lib = {"/p/R.JPG": ev("/p/R.JPG", DAY, -480, (park[0] + 0.27, park[1]))}
    r = locate_library(lib, {"/p/R.JPG": cand("01.Mount_Rainier_National_Park", park, radius=40_000)})
    assert r["/p/R.JPG"].landmark_key == "01.Mount_Rainier_National_Park"
    r = locate_library(lib, {"/p/R.JPG": cand("01.Mount_Rainier_National_Park", park, radius=2_000)})
    assert r["/p/R.JPG"].landmark_key is None


def test_landmark_and_time_estimate_agreeing_and_disagreeing():
    lib = {"/p/A.JPG": ev("/p/A.JPG", DAY.replace(hour=10), 60, (EIFFEL[0] + 0.01, EIFFEL[1])),
           "/p/B.JPG": ev("/p/B.JPG", DAY.replace(hour=10, minute=30), 60, (EIFFEL[0] + 0.01, EIFFEL[1] + 0.01)),
           "/p/X.JPG": ev("/p/X.JPG", DAY.replace(hour=10, minute=10), 60)}
    r = locate_library(lib, {"/p/X.JPG": cand("16.Eiffel_Tower", EIFFEL, 0.9, name="Eiffel Tower")})
    x = r["/p/X.JPG"]
    assert x.source == "landmark+time" and (x.lat, x.lon) == EIFFEL and x.landmark_key == "16.Eiffel_Tower"
    assert x.evidence.startswith("Eiffel Tower (0.90) where between A.JPG") and x.accuracy_m <= 2000
    r = locate_library(lib, {"/p/X.JPG": cand("21.Taj_Mahal", AGRA, 0.9, name="Taj Mahal")})
    x = r["/p/X.JPG"]
    assert x.source == "none" and x.lat is None and x.landmark_key is None
    assert x.note.startswith("no place, landmark withheld: pixels say Taj Mahal (0.90) but the time estimate")
    # an unsure landmark (below the threshold) vetoes nothing: the time estimate stands, no name
    x = locate_library(lib, {"/p/X.JPG": cand("21.Taj_Mahal", AGRA, 0.3)})["/p/X.JPG"]
    assert x.source == "time" and x.landmark_key is None


def test_scans_and_photos_with_only_a_landmark_are_placed_by_the_pixels():
    lib = {"/p/scan1.jpg": PhotoEvidence("/p/scan1.jpg"), "/p/scan2.jpg": PhotoEvidence("/p/scan2.jpg"),
           "/p/lonely.JPG": ev("/p/lonely.JPG", DAY.replace(hour=10), 60)}
    cands = {"/p/scan1.jpg": cand("16.Eiffel_Tower", EIFFEL, 0.8, radius=5000, name="Eiffel Tower"),
             "/p/scan2.jpg": cand("16.Eiffel_Tower", EIFFEL, 0.3),
             "/p/lonely.JPG": cand("21.Taj_Mahal", AGRA, 0.9)}
    r = locate_library(lib, cands)
    s1 = r["/p/scan1.jpg"]
    assert (s1.source, s1.lat, s1.lon, s1.accuracy_m) == ("landmark", *EIFFEL, 5000)
    assert s1.landmark_key == "16.Eiffel_Tower" and s1.evidence == "pixels: Eiffel Tower (0.80)"
    assert r["/p/scan2.jpg"].source == "none" and r["/p/scan2.jpg"].note == "no capture time"
    assert r["/p/lonely.JPG"].source == "landmark" and (r["/p/lonely.JPG"].lat, r["/p/lonely.JPG"].lon) == AGRA
    # switched off: no landmark places, no names
    r = locate_library(lib, cands, options=LocateOptions(use_landmarks=False))
    assert all(p.source == "none" and p.landmark_key is None for p in r.values())


def test_camera_gps_is_never_replaced_and_sources_switch_off():
    lib = {"/p/A.JPG": ev("/p/A.JPG", DAY.replace(hour=10), 60, PARIS),
           "/p/X.JPG": ev("/p/X.JPG", DAY.replace(hour=10, minute=1), 60, TOKYO),
           "/p/Y.JPG": ev("/p/Y.JPG", DAY.replace(hour=10, minute=2), 60)}
    r = locate_library(lib, {"/p/X.JPG": cand("16.Eiffel_Tower", EIFFEL)})
    assert (r["/p/X.JPG"].source, r["/p/X.JPG"].lat, r["/p/X.JPG"].lon) == ("camera", *TOKYO)
    assert r["/p/Y.JPG"].source == "time"
    r = locate_library(lib, {}, options=LocateOptions(use_time=False))
    assert r["/p/Y.JPG"].source == "none" and r["/p/A.JPG"].source == "camera"
    r = locate_library(lib, {}, options=LocateOptions(use_camera=False))
    assert all(p.source == "none" for p in r.values())


class StandInTrack:
    """A track with one fix a minute along a line, Paris eastwards, from 09:00 UTC."""
    start = datetime(2026, 3, 2, 9, tzinfo=timezone.utc)

    def position_at(self, instant_utc, offset=timedelta(0)):
        minutes = (instant_utc + offset - self.start).total_seconds() / 60
        if not 0 <= minutes <= 120:
            return None
        return PARIS[0], PARIS[1] + minutes * 0.001, 15.0, f"track.gpx, {minutes:.0f} min in"


def test_track_places_photos_with_an_instant_or_a_camera_clock_and_offset():
    lib = {"/p/X.JPG": ev("/p/X.JPG", DAY.replace(hour=10, minute=30), 60),       # 09:30 UTC
           "/p/C.JPG": ev("/p/C.JPG", DAY.replace(hour=10, minute=0), None, device=CANON),
           "/p/G.JPG": ev("/p/G.JPG", DAY.replace(hour=10, minute=30), 60, TOKYO)}
    cands = {"/p/X.JPG": cand("21.Taj_Mahal", AGRA, 0.9, name="Taj Mahal")}
    r = locate_library(lib, cands, tracks=StandInTrack())
    x = r["/p/X.JPG"]
    assert (x.source, x.lat, x.accuracy_m, x.evidence) == ("track", PARIS[0], 15.0, "track.gpx, 30 min in")
    assert x.lon == pytest.approx(PARIS[1] + 0.03) and x.landmark_key is None and "GPS track" in x.note
    assert r["/p/G.JPG"].source == "camera" and r["/p/C.JPG"].source == "none"
    # the camera clock is on UTC+01:00: --track-offset -1 h puts 10:00 at 09:00 UTC
    r = locate_library(lib, cands, tracks=StandInTrack(), options=LocateOptions(track_offset=timedelta(hours=-1)))
    assert r["/p/C.JPG"].source == "track" and r["/p/C.JPG"].lon == pytest.approx(PARIS[1])
    assert locate_library(lib, cands, tracks=StandInTrack(),
                          options=LocateOptions(use_tracks=False))["/p/X.JPG"].source == "none"


# --- re-runs, speed, data ----------------------------------------------------------------------------------------

def test_inputs_digest_changes_when_a_neighbour_is_added_and_only_then():
    lib = {"/p/A.JPG": ev("/p/A.JPG", DAY.replace(hour=10), 60, PARIS),
           "/p/B.JPG": ev("/p/B.JPG", DAY.replace(hour=11), 60, PARIS),
           "/p/X.JPG": ev("/p/X.JPG", DAY.replace(hour=10, minute=40), 60)}
    before = locate_library(lib, {})["/p/X.JPG"].inputs
    assert before and before == locate_library(dict(reversed(list(lib.items()))), {})["/p/X.JPG"].inputs
    far = dict(lib, **{"/p/F.JPG": ev("/p/F.JPG", DAY.replace(day=9, hour=10), 60, TOKYO)})
    assert locate_library(far, {})["/p/X.JPG"].inputs == before
    closer = dict(lib, **{"/p/C.JPG": ev("/p/C.JPG", DAY.replace(hour=10, minute=35), 60, LYON)})
    after = locate_library(closer, {})["/p/X.JPG"]
    assert after.inputs != before and "C.JPG" in after.evidence
    # a new landmark decision changes it too
    assert locate_library(lib, {"/p/X.JPG": cand("16.Eiffel_Tower", EIFFEL)})["/p/X.JPG"].inputs != before


def test_twenty_thousand_photos_locate_in_seconds():
    rng = np.random.default_rng(0)
    lib = {}
    t0 = DAY
    where = np.array(PARIS)
    for i in range(20_000):
        t = t0 + timedelta(seconds=int(i * 600 + rng.integers(0, 300)))
        where += rng.normal(0, 0.003, 2)      # a random walk of about 300 m between photos
        if i % 3 == 0:
            lib[f"/p/{i}.JPG"] = ev(f"/p/{i}.JPG", t, 60, tuple(where.tolist()))
        elif i % 3 == 1:
            lib[f"/p/{i}.JPG"] = ev(f"/p/{i}.JPG", t, 60)
        else:
            lib[f"/p/{i}.JPG"] = ev(f"/p/{i}.JPG", t, None, device=CANON)
    start = time.perf_counter()
    r = locate_library(lib, {})
    took = time.perf_counter() - start
    assert len(r) == 20_000 and sum(p.source == "time" for p in r.values()) >= 6000
    assert took < 20, f"{took:.1f} s"


def test_every_landmark_has_a_radius_and_natural_areas_a_larger_one():
    data = load_landmarks()
    assert all(1000 <= info["radius_m"] <= 1_500_000 for info in data.values())
    assert landmark_radius_m("13.Yellowstone_National_Park") >= 20_000
    assert landmark_radius_m("16.Eiffel_Tower") <= 5_000
    assert landmark_radius_m("07.My_Back_Garden") == 2_000
    c = candidate_for("16.Eiffel_Tower", 0.8, 0.5)
    assert (c.name, c.lat, c.lon, c.radius_m) == ("Eiffel Tower", 48.8584, 2.2945, 5000.0)
    assert candidate_for("07.My_Back_Garden", 0.9, 0.5).lat is None


def test_track_at_a_camera_clock_offset_estimated_from_the_library():
    """A camera without offsets, its clock found from its shooting with the phone: its photos go on the track."""
    lib = Library(8)
    home_days(lib, 3)
    r = lib.locate(tracks=StandInTrack())
    on_track = [p for p in lib.of(CANON) if r[p].source == "track"]
    assert on_track and all("Canon EOS 80D clock UTC+01:00" in r[p].evidence for p in on_track)
    for p in on_track:  # the stand-in track's position at the photo's true instant
        minutes = (lib.evidence[p].time_local - timedelta(hours=1) - DAY.replace(hour=9)).total_seconds() / 60
        assert abs(r[p].lon - (PARIS[1] + minutes * 0.001)) < 0.003       # within 3 minutes along it
