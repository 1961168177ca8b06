"""The location engine's rules for short sessions and trips (issue #21, second round), on hand-made timelines:
a few photos at the GPS device's local time, a "same place" offset that is the device's known clock, the pixels'
verdict only when it is measurable, and a trip told by the GPS device's own photos.

Each rule is checked with its trap: the second person's camera at home while the phone is abroad stays unplaced.
"""
from __future__ import annotations

from datetime import timedelta

from test_locate import CANON, DAY, NIKON, PARIS, PHONE, TOKYO, Library, _same_scene_similarity, home_days, near


def _outing(lib, t, place, zone_min, camera=NIKON, camera_zone_min=None, shots=1, lag_min=3, camera_where=None):
    """One phone photo and ``shots`` camera photos ``lag_min`` minutes after it (UTC ``t``)."""
    where = near(place, lib.rng)
    lib.add(PHONE, t, where, zone_min, True, True)
    for k in range(shots):
        lib.add(camera, t + timedelta(minutes=lag_min + k), camera_where or near(where, lib.rng, 0.05),
                zone_min if camera_zone_min is None else camera_zone_min, False, False)


def test_two_photos_at_the_phones_local_time_at_home_are_placed_and_abroad_not():
    """Two photos cannot pass the clear winner rule (3), but both within minutes of the phone's at its local time
    (the offset a person sets a camera to) and at no other zone: at home that places them; a later single photo
    then takes that clock as its history. The same camera at home while the phone is in Tokyo stays unplaced."""
    lib = Library(21)
    home_days(lib, 12, camera=None)                      # the phone alone: home is Paris
    day = DAY + timedelta(days=14, hours=10) - timedelta(minutes=60)
    _outing(lib, day, PARIS, 60)
    _outing(lib, day + timedelta(minutes=50), PARIS, 60)
    _outing(lib, day + timedelta(days=3, hours=2), PARIS, 60)          # one photo, days later
    for d in range(3):                                   # the phone in Tokyo, the Nikon still in Paris on its clock
        t = DAY + timedelta(days=25 + d, hours=10) - timedelta(minutes=540)
        for k in range(3):
            _outing(lib, t + timedelta(minutes=70 * k), TOKYO, 540, camera_zone_min=60,
                    camera_where=near(PARIS, lib.rng))
    r = lib.locate()
    nikon = sorted(lib.of(NIKON), key=lambda p: lib.evidence[p].time_local)
    first, single, abroad = nikon[:2], nikon[2], nikon[3:]
    assert all(r[p].source == "time" and "at its local time" in r[p].evidence for p in first)
    assert r[single].source == "time" and "as in its session of" in r[single].evidence
    assert max(lib.error_km(r, p) for p in nikon[:3]) < 1.0
    assert all(r[p].lat is None for p in abroad), [r[p].evidence for p in abroad if r[p].lat is not None]
    # a third photo matching nothing at that zone: not every photo matched, no place from this rule
    lib.add(NIKON, day + timedelta(hours=5), PARIS, 60, False, False)
    r2 = lib.locate()
    assert all(r2[p].lat is None and "clock offset unknown" in r2[p].note for p in first)


def test_same_place_offset_that_is_the_devices_own_clock_counts_as_its_history():
    """At home the phone stays in one place for hours, so several offsets put the camera's photos there ("same
    place": no evidence of being together on its own). When the device's clear sessions show that very clock,
    its matches are its history's and the session is placed; a camera never seen on that clock is not."""
    lib = Library(22)
    home_days(lib, 3)                                    # the Canon on Paris time with the phone: clear sessions
    t = DAY + timedelta(days=6, hours=11) - timedelta(minutes=60)
    spot = near(PARIS, lib.rng)
    for k in range(12):                                  # the phone at one spot every 20 min for 4 h
        lib.add(PHONE, t + timedelta(minutes=20 * k), near(spot, lib.rng, 0.05), 60, True, True)
    for k in (3, 4, 5):                                  # three camera photos among them
        lib.add(CANON, t + timedelta(minutes=20 * k + 2), near(spot, lib.rng, 0.05), 60, False, False)
    r = lib.locate()
    late = [p for p in lib.of(CANON) if lib.evidence[p].time_local >= t + timedelta(minutes=60)]
    assert len(late) == 3
    assert all(r[p].source == "time" and "its clock as in its session of" in r[p].evidence for p in late)
    assert max(lib.error_km(r, p) for p in late) < 1.0


def test_the_pixels_veto_only_when_measurable():
    """Abroad, a strong interleave (a clear offset, most photos shot with the phone's) is enough unless the pixels
    say the scenes do not overlap. Six matched pairs that look about as alike as photos from elsewhere, single
    pairs' similarities scattering by +-0.1, are no verdict (a gain of 0.02, standard error 0.03; the veto fired
    under 0.05 before); twelve pairs that look 0.1 less alike than those from elsewhere are."""
    def number(path):
        return int(path.rsplit("_", 1)[1].split(".")[0])

    def scatter(level_same):
        def sim(a, b):
            same = lib.truth[a] is not None and abs(lib.truth[a][0] - lib.truth[b][0]) < 0.01
            return (level_same if same else 0.2) + 0.1 * ((number(a) + number(b)) % 3 - 1)
        return sim

    lib = Library(23)
    home_days(lib, 6)
    lib.day(DAY + timedelta(days=20), TOKYO, 540, camera_clock_min=540, scenes=3, camera_shots=2)
    trip = [p for p in lib.of(CANON) if lib.evidence[p].time_local >= DAY + timedelta(days=20)]
    r = lib.locate(similarity=scatter(0.2))
    assert len(trip) == 6 and all(r[p].source == "time" for p in trip), [r[p].note for p in trip]
    assert max(lib.error_km(r, p) for p in trip) < 2.5
    lib.day(DAY + timedelta(days=21), TOKYO, 540, camera_clock_min=540, scenes=6, camera_shots=2)
    day2 = [p for p in lib.of(CANON) if lib.evidence[p].time_local >= DAY + timedelta(days=21)]
    r2 = lib.locate(similarity=scatter(0.1))
    assert len(day2) == 12 and all(r2[p].lat is None and "away from home" in r2[p].note for p in day2)


def test_a_trip_day_without_camera_photos_does_not_end_the_trip_the_way_home_does():
    """Camera sessions 3 days apart in Tokyo: over the 48 h that chains a device's own sessions, but the phone's
    photos in between show one stay away in one time zone: the later, weak session is on the same trip. When the
    phone was home in between, it is not."""
    def build(phone_home_between):
        lib = Library(24)
        home_days(lib, 12)
        lib.day(DAY + timedelta(days=20), TOKYO, 540, camera_clock_min=540, scenes=6, camera_shots=2)
        for d in (21, 22):                               # the phone alone: in Tokyo, or back in Paris
            place, zone = (PARIS, 60) if phone_home_between else (TOKYO, 540)
            for k in range(3):
                lib.add(PHONE, DAY + timedelta(days=d, hours=10 + 3 * k) - timedelta(minutes=zone),
                        near(place, lib.rng), zone, True, True)
        t = DAY + timedelta(days=23, hours=10) - timedelta(minutes=540)   # one camera photo, with the phone
        _outing(lib, t, TOKYO, 540, camera=CANON, camera_zone_min=540)
        late = [p for p in lib.of(CANON) if lib.evidence[p].time_local >= DAY + timedelta(days=23)]
        return lib, late, lib.locate(similarity=_same_scene_similarity(lib))

    lib, late, r = build(False)
    assert len(late) == 1 and r[late[0]].source == "time", r[late[0]].note
    assert "same trip as its session of" in r[late[0]].evidence and lib.error_km(r, late[0]) < 1.0
    _, late, r = build(True)
    assert r[late[0]].lat is None
