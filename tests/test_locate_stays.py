"""The location engine's rules for short sessions and trips (issue #21, second round), on hand-made timelines:
a few photos at the GPS device's local time, a "same place" offset that is the device's known clock, the pixels'
verdict only when it is measurable, and a trip told by the GPS device's own photos; and (third round) a landmark
alone checked against the owner's whereabouts at the clocks its camera may have been on, a track among those
whereabouts, a guessed clock the track settles, and "same place" sessions abroad placed by the pixels.

Each rule is checked with its trap: the second person's camera at home while the phone is abroad stays unplaced.
"""
from __future__ import annotations

from datetime import timedelta, timezone

from test_locate import (CANON, DAY, NIKON, PARIS, PHONE, TOKYO, Library, _same_scene_similarity, cand, home_days,
                         near)


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


# --- a landmark alone, against the owner's whereabouts (issue #21, third round) ----------------------------------

GIZA = (29.9792, 31.1342)     # 3,200 km from Paris: 8 h door to door by air


def _giza(lib):
    return cand("05.Great_Pyramid_of_Giza", GIZA, 0.75, radius=5000.0, name="Great Pyramid of Giza")


def test_a_landmark_alone_is_checked_at_the_clock_its_camera_was_on_not_at_every_zone():
    """The Canon's clock is on Paris time (its sessions with the phone at home). A lone Canon photo at 09:30 on
    that clock, half-way between two phone photos in Paris, shows the pyramids by the pixels: at UTC+01:00 the
    owner was in Paris then, so the landmark is withheld. At UTC-12:00, a clock nobody set, the same reading would
    fall 12 h after the phone's last photo of the day, time enough to fly there: testing every zone let it
    through (the benchmark's seed 7). The same photo on a day the phone shows nothing for 60 h is placed."""
    lib = Library(31)
    home_days(lib, 3)
    day = DAY + timedelta(days=6)
    for h in (8, 9):                                     # the phone in Paris at 08:00 and 09:00 UTC, then 3 days
        lib.add(PHONE, day + timedelta(hours=h), near(PARIS, lib.rng), 60, True, True)   # nothing
    lib.add(PHONE, day + timedelta(days=3, hours=9), near(PARIS, lib.rng), 60, True, True)
    ruled_out = lib.add(CANON, day + timedelta(hours=8, minutes=30), near(PARIS, lib.rng), 60, False, False,
                        landmark=_giza(lib))
    possible = lib.add(CANON, day + timedelta(days=1, hours=12), GIZA, 60, False, False, landmark=_giza(lib))
    r = lib.locate()
    assert r[ruled_out].lat is None and "leave no time to get there" in r[ruled_out].note, r[ruled_out]
    assert r[possible].source == "landmark" and lib.error_km(r, possible) < 1.0


def test_a_gps_track_is_the_owners_whereabouts_for_a_landmark_alone():
    """No phone photo for days, but the owner's GPS track puts them in Paris until 17:00 UTC. A Canon photo (its
    clock on Paris time, as in its sessions at home) at 19:00 UTC, past the track's end, shows the pyramids by the
    pixels: 2 h after the track's last point in Paris is no time to get there (the benchmark's seed 101, a hike)."""
    from src.tracks import TrackPoint, TrackSet
    lib = Library(32)
    home_days(lib, 3)
    day = DAY + timedelta(days=6)
    start = (day + timedelta(hours=9)).replace(tzinfo=timezone.utc).timestamp()
    track = TrackSet([TrackPoint(start + 60.0 * k, PARIS[0], PARIS[1] + 0.0005 * k, 10.0, "walk.gpx", k == 0)
                      for k in range(8 * 60 + 1)], ["walk.gpx"])
    after = lib.add(CANON, day + timedelta(hours=19), near(PARIS, lib.rng), 60, False, False, landmark=_giza(lib))
    on_track = lib.add(CANON, day + timedelta(hours=12), near(PARIS, lib.rng), 60, False, False)
    r = lib.locate(tracks=track)
    assert r[on_track].source == "track"
    assert r[after].lat is None and "leave no time to get there" in r[after].note, r[after]


def test_similar_scenes_support_needs_two_standard_errors_like_the_veto():
    """Abroad, a clear offset on 4 of 9 photos (not most of them: no strong interleave) needs the pixels. Four
    matched pairs averaging 0.12 above photos from elsewhere but scattering from -0.4 to 1.0 (a standard error of
    0.07) are no verdict: unplaced, as the veto would not fire on them either. Four pairs 0.12 above with little
    scatter are: placed."""
    def build(levels):
        lib = Library(25)
        home_days(lib, 6)
        t = DAY + timedelta(days=20, hours=10) - timedelta(minutes=540)
        phone = [0, 60, 154, 271]                        # minutes: no other zone lines the camera up as well
        for k, m in enumerate(phone):
            _outing(lib, t + timedelta(minutes=m), TOKYO, 540, camera=CANON, camera_zone_min=540)
        for m in (phone[0] + 15, phone[1] + 45, phone[2] + 15, phone[3] + 20, phone[3] + 45):
            lib.add(CANON, t + timedelta(minutes=m), near(TOKYO, lib.rng), 540, False, False)
        canon = sorted((p for p in lib.of(CANON) if lib.evidence[p].time_local >= DAY + timedelta(days=20)),
                       key=lambda p: lib.evidence[p].time_local)
        matched = sorted(canon, key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))[:4]

        def sim(a, b):
            if a in matched and lib.truth[b][0] < 40:    # a matched pair: the phone's Tokyo photo
                return levels[matched.index(a)]
            return 0.2
        return lib, canon, lib.locate(similarity=sim)

    lib, canon, r = build([0.34, 0.30, 0.32, 0.32])
    assert len(canon) == 9 and all(r[p].source == "time" for p in canon), [r[p].note for p in canon]
    _, canon, r = build([1.0, -0.4, 0.7, -0.02])
    assert all(r[p].lat is None and "away from home" in r[p].note for p in canon)


def test_a_guessed_clock_takes_the_devices_clock_before_or_after_that_puts_its_photos_on_the_track():
    """A hike without phone photos: the Canon (on Paris time, as at home) has only its history for a clock, and
    its nearest clear session is a later trip to Dubai (UTC+04:00). At +04:00 its photos shift 3 h earlier: some
    fall off the owner's track, the others on it 3 h of walking (6 km) from where they were taken, at an accuracy of
    0.4 km (the benchmark's seeds 7 and 101). Its clock before the hike (Paris time, at home) puts all of them on
    the track: a camera is set once at most between two sessions, so that clock is as likely, and the track says
    which."""
    from src.tracks import TrackPoint, TrackSet
    dubai = (25.2048, 55.2708)
    lib = Library(33)
    home_days(lib, 3)
    lib.day(DAY + timedelta(days=20), dubai, 240, camera_clock_min=240)
    day = DAY + timedelta(days=14)
    start = (day + timedelta(hours=9)).replace(tzinfo=timezone.utc).timestamp()

    def on_track(minutes):                               # 2.2 km/h eastwards from Paris, from 09:00 UTC
        return PARIS[0], PARIS[1] + 0.0005 * minutes
    track = TrackSet([TrackPoint(start + 60.0 * k, *on_track(k), 10.0, "hike.gpx", k == 0) for k in range(6 * 60 + 1)],
                     ["hike.gpx"])
    hike = [lib.add(CANON, day + timedelta(hours=10, minutes=30 * k), on_track(60 + 30 * k), 60, False, False)
            for k in range(7)]
    r = lib.locate(tracks=track)
    assert all(r[p].source == "track" and "UTC+01:00 as in its session just before" in r[p].evidence
               for p in hike), [r[p] for p in hike]
    assert all(lib.error_km(r, p) <= r[p].accuracy_m / 1000.0 < 0.5 for p in hike)


def test_abroad_a_same_place_session_whose_scenes_look_like_the_phones_is_placed():
    """In Tokyo the phone stays at one spot for 4 h, so several offsets put the Canon's photos there ("same
    place": its matches say nothing about being together). Abroad that alone is not enough; the pixels, measurably
    alike with the phone's photos of those hours, are (the benchmark's seeds 7 and 101: 6 photos in Tuscany, 6 in
    London). The same photos looking no more alike than photos from elsewhere stay unplaced."""
    def build(similar):
        lib = Library(26)
        home_days(lib, 6)
        t = DAY + timedelta(days=20, hours=11) - timedelta(minutes=540)
        spot = near(TOKYO, lib.rng)
        for k in range(12):                              # the phone at one spot every 20 min for 4 h
            lib.add(PHONE, t + timedelta(minutes=20 * k), near(spot, lib.rng, 0.05), 540, True, True)
        for k in (3, 4, 5, 7):
            lib.add(CANON, t + timedelta(minutes=20 * k + 2), near(spot, lib.rng, 0.05), 540, False, False)
        trip = [p for p in lib.of(CANON) if lib.evidence[p].time_local >= DAY + timedelta(days=20)]
        sim = _same_scene_similarity(lib) if similar else (lambda a, b: 0.2)
        return lib, trip, lib.locate(similarity=sim)

    lib, trip, r = build(True)
    assert len(trip) == 4 and all(r[p].source == "time" and "same place" in r[p].evidence for p in trip), \
        [r[p].note for p in trip]
    assert all(lib.error_km(r, p) <= r[p].accuracy_m / 1000.0 for p in trip)
    _, trip, r = build(False)
    assert all(r[p].lat is None and "away from home" in r[p].note for p in trip)
