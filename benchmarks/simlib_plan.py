"""The story of the simulated library (:mod:`simlib`): the devices, the year's trips and days, who shoots what,
when and where. :class:`Planner` plans every shot (device, true instant, true place, what it shows) before
:mod:`simlib` writes any file; every assumption is listed in docs/locate.md.
"""
from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

PROJECT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT.parent / "shared" / "data"
sys.path.insert(0, str(PROJECT))

from src.openset import split_negatives  # noqa: E402  (after the sys.path line: runs as a script too)

YEAR = 2025
HOME_ZONE = "Europe/Berlin"
HOME = (48.1374, 11.5755)          # Munich, Marienplatz
MUC = (48.3538, 11.7861)           # Munich airport
EARTH_M = 6_371_000.0
UNTAUGHT = {"Big Ben": (51.5007, -0.1246), "Leaning Tower of Pisa": (43.7230, 10.3966),
            "Mount Fuji": (35.3606, 138.7274), "Saint Basil's Cathedral": (55.7525, 37.6231),
            "Sydney Opera House": (-33.8568, 151.2153)}
UNTAUGHT_FOLDERS = {"Big Ben": "00.Big_Ben", "Leaning Tower of Pisa": "01.Leaning_Tower_Of_Pisa",
                    "Mount Fuji": "02.Mount_Fuji", "Saint Basil's Cathedral": "03.Saint_Basils_Cathedral",
                    "Sydney Opera House": "04.Sydney_Opera_House"}


@dataclass(frozen=True)
class Device:
    key: str
    make: str
    model: str
    serial: str | None
    prefix: str          # file names as the device writes them
    counter: int         # first file number of the year
    drift_s: float       # how far its clock is ahead of the true time (phones: network time, 0)
    gps: bool            # writes its own GPS position, offset and GPS time


DEVICES = {d.key: d for d in (
    Device("phone", "Apple", "iPhone 12", None, "IMG_", 1204, 0.0, True),
    Device("camera", "Canon", "Canon EOS 80D", "083021004417", "_MG_", 4710, 45.0, False),
    Device("partner", "NIKON CORPORATION", "NIKON Z 50", "6031828", "DSC_", 312, -20.0, False),
)}

# Trips: (name, zone, first day, nights, flight hours, arrival airport, stay (centre of city sessions), landmark
# (kind, key), where the landmark is seen from (None: beside it; else a viewpoint), day trip base or None (the
# landmark is then a day trip from the stay, hours each way), camera clock on the trip: "local" or "home").
TRIPS = [
    ("India", "Asia/Kolkata", date(YEAR, 2, 14), 6, 8.0, (28.5562, 77.1000), (28.6139, 77.2090),
     ("known", "12.Taj_Mahal"), None, ((27.1767, 78.0081), 4.0), "home"),
    ("London", "Europe/London", date(YEAR, 3, 20), 4, 2.0, (51.4700, -0.4543), (51.5074, -0.1278),
     ("untaught", "Big Ben"), None, None, "local"),
    ("Istanbul", "Europe/Istanbul", date(YEAR, 4, 17), 5, 2.8, (41.2753, 28.7519), (41.0082, 28.9784),
     ("known", "08.Hagia_Sophia"), None, None, "local"),
    ("Tuscany", "Europe/Rome", date(YEAR, 5, 29), 4, 1.3, (43.6839, 10.3927), (43.7696, 11.2558),
     ("untaught", "Leaning Tower of Pisa"), None, ((43.7230, 10.3966), 1.2), "local"),
    ("Mexico", "America/Cancun", date(YEAR, 8, 2), 9, 11.5, (21.0365, -86.8771), (21.1619, -86.8515),
     ("known", "02.Chichen_Itza"), None, ((20.6843, -88.5678), 2.7), "local"),
    ("Japan", "Asia/Tokyo", date(YEAR, 10, 4), 7, 12.0, (35.5494, 139.7798), (35.6762, 139.6503),
     ("untaught", "Mount Fuji"), (35.5100, 138.7640), ((35.5100, 138.7640), 2.2), "local"),
    ("Egypt", "Africa/Cairo", date(YEAR, 11, 8), 5, 3.8, (30.1219, 31.4056), (30.0444, 31.2357),
     ("known", "07.Great_Pyramid_Of_Giza"), None, None, "local"),
    ("Cambodia", "Asia/Phnom_Penh", date(YEAR, 12, 17), 5, 15.0, (13.3700, 104.2200), (13.3633, 103.8564),
     ("known", "01.Angkor_Wat"), None, None, "local"),
    ("Sydney", "Australia/Sydney", date(YEAR, 1, 3), 8, 22.5, (-33.9399, 151.1753), (-33.8688, 151.2093),
     ("untaught", "Sydney Opera House"), None, None, "local"),
]
TRIP_START = {t[0]: t[2] for t in TRIPS}
PARTNER_HOME_TRIP = "Japan"                        # the second person's camera stays at home during this trip
PARTNER_TOGETHER_DAYS = [date(YEAR, 4, 6), date(YEAR, 6, 21), date(YEAR, 9, 14)]   # with the phone in Munich
HIKE_DAY = date(YEAR, 7, 12)
HIKE_PATH = [(47.4925, 11.0960), (47.4700, 11.1150), (47.4505, 11.0820), (47.4330, 11.0600), (47.4219, 11.0466)]
LANDSCAPE_DAY = date(YEAR, 9, 14)
LANDSCAPE_SPOTS = [(47.8667, 12.4167), (47.5936, 12.9875), (47.6110, 12.8970)]   # Chiemsee, Koenigssee, Ramsau
SCAN_KNOWN = ["04.Colosseum_Rome", "04.Colosseum_Rome", "03.Cologne_Cathedral", "10.Palace_Of_Versailles",
              "09.Machu_Picchu", "11.Petra_Jordan", "00.Alhambra_Palace"]
SCAN_UNTAUGHT = ["Saint Basil's Cathedral", "Saint Basil's Cathedral"]
SCAN_EVERYDAY = ["people", "people", "people", "animals", "documents_screens"]   # taken at home long ago
HOME_KINDS = ["animals", "food", "indoor", "people", "objects", "vehicles", "documents_screens", "food", "people"]
TRIP_KINDS = ["food", "people", "streets_buildings", "streets_buildings", "vehicles", "nature"]


@dataclass
class Shot:
    device: str
    utc: datetime | None             # None: scans (no capture time)
    lat: float
    lon: float
    content: str                     # "known" | "untaught" | "none"
    landmark: str | None             # landmarks13 class key / untaught landmark name / None
    source: str                      # the photo used, relative to ../shared/data
    day_kind: str                    # home | travel | trip | daytrip | hike | landscape | scan
    place: str
    clock_zone: str | None           # the zone the device's clock was set to (None: scans)
    situation: list[str] = field(default_factory=list)
    absurd: str | None = None        # "gps_0_0" | "year_1970" | "year_2099" | "garbage_date"
    trip: str | None = None
    path: str = ""


def offset_m(origin: tuple[float, float], north_m: float, east_m: float) -> tuple[float, float]:
    lat = origin[0] + math.degrees(north_m / EARTH_M)
    lon = origin[1] + math.degrees(east_m / (EARTH_M * math.cos(math.radians(origin[0]))))
    return lat, lon


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine), metres."""
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_M * math.asin(min(1.0, math.sqrt(h)))


def lerp(a: tuple[float, float], b: tuple[float, float], f: float) -> tuple[float, float]:
    return a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f


class Pools:
    """The photos each kind of shot draws from, each used at most once; the everyday photos are the *measure*
    halves of ``everyday`` and ``everyday2`` (:func:`src.openset.split_negatives`; the other halves calibrate the
    model's "no known landmark")."""

    def __init__(self, data: Path, rng: random.Random):
        self.data, self.rng = data, rng
        self.everyday: dict[str, list[str]] = {}
        for folder in ("everyday", "everyday2"):   # `calibrate` calibrates on the other halves of both
            for path in split_negatives(data / folder)["measure"]:
                self.everyday.setdefault(path.parent.name, []).append(path.relative_to(data).as_posix())
        for items in self.everyday.values():
            rng.shuffle(items)

    def landmark(self, kind: str, key: str) -> list[str]:
        folder = (self.data / "landmarks13" / "test" / key if kind == "known"
                  else self.data / "new_landmarks" / "test" / UNTAUGHT_FOLDERS[key])
        items = sorted(p.relative_to(self.data).as_posix() for p in folder.iterdir() if p.is_file())
        self.rng.shuffle(items)
        return items

    def take(self, kind: str) -> str:
        for k in [kind] + sorted(self.everyday, key=lambda k: -len(self.everyday[k])):
            if self.everyday.get(k):
                return self.everyday[k].pop()
        raise ValueError("ran out of everyday photos")


class Planner:
    """Plans every shot of the year (device, true instant, true place, content) before any file is written."""

    def __init__(self, data: Path, rng: random.Random):
        self.rng, self.pools, self.shots = rng, Pools(data, rng), []
        lm = json.loads((PROJECT / "src" / "landmarks.json").read_text(encoding="utf-8"))["landmarks"]
        self.known = {k: (v["lat"], v["lon"]) for k, v in lm.items()}

    def utc(self, day: date, hhmm: float, zone: str) -> datetime:
        local = datetime.combine(day, time()) + timedelta(hours=hhmm)
        return local.replace(tzinfo=ZoneInfo(zone)).astimezone(timezone.utc)

    def session(self, day: date, hhmm: float, minutes: float, zone: str, centre: tuple[float, float], *,
                phone: int = 0, camera: int = 0, partner: int = 0, contents: list | None = None,
                day_kind: str = "home", place: str = "Munich", clocks: dict | None = None, walk_mps: float = 0.7,
                situation: tuple[str, ...] = (), kinds: list[str] | None = None) -> None:
        """Shots of one outing: the devices' photos within ``minutes`` of ``hhmm`` local time, walking from a point
        near ``centre``; a camera's photos are taken 0.5-8 min from one of the phone's (a quarter of them 8-45 min).
        ``contents``: (content, landmark) per photo, the rest everyday photos of the place's kinds."""
        rng = self.rng
        start = self.utc(day, hhmm, zone)
        # the walk: a new heading and speed every 5 minutes (stops included)
        pos, path = offset_m(centre, rng.gauss(0, 150), rng.gauss(0, 150)), []
        for _ in range(int(minutes // 5) + 2):
            path.append(pos)
            heading, speed = rng.uniform(0, 2 * math.pi), walk_mps * rng.choice([0, 0.5, 1, 1, 1.3])
            pos = offset_m(pos, 300 * speed * math.cos(heading), 300 * speed * math.sin(heading))

        def where(t_min: float) -> tuple[float, float]:
            i = min(int(t_min // 5), len(path) - 2)
            return lerp(path[i], path[i + 1], min(1.0, (t_min - 5 * i) / 5))

        phone_t = sorted(rng.uniform(0, minutes) for _ in range(phone))
        times = [("phone", t) for t in phone_t]
        for dev, n in (("camera", camera), ("partner", partner)):
            for _ in range(n):
                # mostly minutes from a phone photo; a quarter while the phone stays in the pocket longer
                apart = rng.uniform(0.5, 8) if rng.random() < 0.75 else rng.uniform(8, 45)
                t = (rng.choice(phone_t) + rng.choice([-1, 1]) * apart) if phone_t else rng.uniform(0, minutes)
                times.append((dev, min(max(t, 0.0), minutes)))
        rng.shuffle(times)
        contents = list(contents or [])
        kinds = kinds or (HOME_KINDS if day_kind == "home" else TRIP_KINDS)
        for i, (dev, t) in enumerate(sorted(times, key=lambda x: x[1])):
            content, landmark = contents[i] if i < len(contents) else ("none", None)
            source = landmark[1] if content != "none" else self.pools.take(rng.choice(kinds))
            self.shots.append(Shot(dev, start + timedelta(minutes=t), *where(t), content,
                                   landmark[0] if landmark else None, source, day_kind, place,
                                   (clocks or {}).get(dev, zone), list(situation)))

    def landmark_contents(self, kind: str, key: str, n: int) -> list:
        photos = self.pools.landmark(kind, key)[:n]
        return [(kind, (key, p)) for p in photos]

    # ---------------------------------------------------------------------------------------------------------
    def home_days(self, busy: set[date]) -> None:
        rng, day = self.rng, date(YEAR, 1, 1)
        while day.year == YEAR:
            chance = 0.08 if day.weekday() < 5 else 0.18     # weekends more
            left = sum(map(len, self.pools.everyday.values()))
            if day not in busy and left > 20 and (day in PARTNER_TOGETHER_DAYS or rng.random() < chance):
                for _ in range(1 if rng.random() < 0.75 else 2):
                    camera = rng.choice([0, 0, 0, 2, 3]) if day.weekday() >= 5 else 0
                    partner = 2 if day in PARTNER_TOGETHER_DAYS else 0
                    self.session(day, rng.uniform(9, 20), rng.uniform(15, 90), HOME_ZONE,
                                 offset_m(HOME, rng.gauss(0, 2500), rng.gauss(0, 2500)),
                                 phone=rng.choice([1, 2, 2, 3]), camera=camera, partner=partner)
            day += timedelta(days=1)

    def trip(self, spec) -> set[date]:
        (name, zone, first, nights, flight_h, airport, stay, (kind, key), viewpoint, daytrip, clock) = spec
        rng, lm_at, first_shot = self.rng, UNTAUGHT[key] if kind == "untaught" else self.known[key], len(self.shots)
        view = viewpoint or lm_at
        local_cam = HOME_ZONE if clock == "home" else zone
        clocks = {"camera": local_cam}
        # out: a phone photo at the airport, the flight, the camera's photos on the way from the arrival airport
        # before the phone's next ones
        self.session(first, 8.0, 20, HOME_ZONE, MUC, phone=1, day_kind="travel", place="Munich airport",
                     walk_mps=0.3)
        depart = self.utc(first, 9.5, HOME_ZONE)
        arrive = depart + timedelta(hours=flight_h)
        arrive_local = arrive.astimezone(ZoneInfo(zone))
        arrive_h = arrive_local.hour + arrive_local.minute / 60
        if arrive_h < 20.5:
            self.session(arrive_local.date(), arrive_h + rng.uniform(0.5, 1.0), 10, zone, lerp(airport, stay, 0.5),
                         camera=2, day_kind="travel", place=f"{name} (from the airport)", clocks=clocks,
                         walk_mps=8.0, situation=("after_flight",))
        lm_photos = self.landmark_contents(kind, key, 99)
        days = [arrive_local.date() + timedelta(days=i) for i in range(1, nights)]
        lm_day = days[len(days) // 2]
        for day in days:
            sessions = [(rng.uniform(9, 11), rng.uniform(60, 150)), (rng.uniform(12.5, 14), rng.uniform(30, 60)),
                        (rng.uniform(17.5, 20.5), rng.uniform(30, 90))]
            for j, (hh, mins) in enumerate(sessions):
                if day == lm_day and j < 2:
                    half = lm_photos[: (len(lm_photos) + 1) // 2] if j == 0 else lm_photos[(len(lm_photos) + 1) // 2:]
                    phone_n = len(half) // 2 + rng.randint(0, 1)
                    centre = daytrip[0] if daytrip and viewpoint else offset_m(view, rng.gauss(0, 250),
                                                                               rng.gauss(0, 250))
                    self.session(day, hh + (daytrip[1] if daytrip else 0), mins, zone, centre, phone=phone_n,
                                 camera=len(half) + 1 - phone_n, contents=half, clocks=clocks,
                                 day_kind="daytrip" if daytrip else "trip", place=name, walk_mps=0.4)
                    continue
                if day == lm_day and daytrip:
                    continue             # on the road back in the evening
                if rng.random() < 0.32:
                    phone_n = rng.choice([1, 1, 2])
                    self.session(day, hh, mins, zone, offset_m(stay, rng.gauss(0, 2500), rng.gauss(0, 2500)),
                                 phone=phone_n, camera=rng.choice([0, 1, 1]), clocks=clocks, day_kind="trip",
                                 place=name)
        # back: a phone photo before leaving for the airport, the flight home, a phone photo at home
        last = days[-1] + timedelta(days=1)
        self.session(last, 8.0, 30, zone, stay, phone=1, camera=1, clocks=clocks, day_kind="travel", place=name)
        back = self.utc(last, 11.0, zone) + timedelta(hours=flight_h)
        home = back.astimezone(ZoneInfo(HOME_ZONE))
        if home.hour < 21:
            self.session(home.date(), home.hour + home.minute / 60 + 1.5, 20, HOME_ZONE, HOME, phone=1,
                         day_kind="travel", place="Munich")
        for shot in self.shots[first_shot:]:
            shot.trip = name
        if name == PARTNER_HOME_TRIP:   # the second person's camera at home, every other day of the trip
            for day in days[::2]:
                self.session(day, rng.uniform(10, 19), rng.uniform(20, 60), HOME_ZONE,
                             offset_m(HOME, rng.gauss(0, 1500), rng.gauss(0, 1500)), partner=3,
                             situation=("partner_home_during_trip",))
        span = (home.date() - first).days + 1
        return {first + timedelta(days=i) for i in range(-1, span + 1)}

    def hike(self, tracks: Path, rng_noise: random.Random) -> Path:
        """The camera alone on a hike (up and back the same path), a GPS logger recording a point every 10 s."""
        import gpxpy.gpx  # noqa: PLC0415 - only the generator needs it

        route = HIKE_PATH + HIKE_PATH[::-1][1:]
        legs = [distance_m(a, b) for a, b in zip(route, route[1:])]
        total, speed = sum(legs), 3.2 / 3.6 * 0.75          # 3.2 km/h walking, 25 % of the time resting
        start = self.utc(HIKE_DAY, 8.0, HOME_ZONE)

        def where(s: float) -> tuple[float, float]:
            d = min(s * speed, total - 1e-6)
            for (a, b), leg in zip(zip(route, route[1:]), legs):
                if d <= leg:
                    return lerp(a, b, d / leg)
                d -= leg
            return route[-1]

        seconds = int(total / speed)
        gpx = gpxpy.gpx.GPX()
        gpx.creator = "simulated GPS logger (benchmarks/simlib.py)"
        track = gpxpy.gpx.GPXTrack(name=f"Hike {HIKE_DAY}")
        segment = gpxpy.gpx.GPXTrackSegment()
        for s in range(-600, seconds + 600, 10):     # logger on 10 min before the start, off 10 min after
            lat, lon = offset_m(where(max(0, s)), rng_noise.gauss(0, 3), rng_noise.gauss(0, 3))
            segment.points.append(gpxpy.gpx.GPXTrackPoint(round(lat, 7), round(lon, 7), elevation=700 + 1900 * (
                1 - abs(min(max(s, 0), seconds) / seconds * 2 - 1)), time=start + timedelta(seconds=s)))
        track.segments.append(segment)
        gpx.tracks.append(track)
        out = tracks / f"hike_{HIKE_DAY}.gpx"
        out.write_text(gpx.to_xml(), encoding="utf-8")
        for _ in range(15):
            s = self.rng.uniform(0, seconds)
            self.shots.append(Shot("camera", start + timedelta(seconds=s), *where(s), "none", None,
                                   self.pools.take(self.rng.choice(["nature", "nature", "streets_buildings"])),
                                   "hike", "Alpspitze hike", HOME_ZONE))
        return out

    def landscape_day(self) -> None:
        for i, spot in enumerate(LANDSCAPE_SPOTS):
            self.session(LANDSCAPE_DAY, 10 + 2.5 * i, 60, HOME_ZONE, spot, phone=3, camera=4, day_kind="landscape",
                         place="Chiemgau/Berchtesgaden", partner=1 if i == 0 else 0,
                         kinds=["nature", "nature", "streets_buildings"])

    def scans(self) -> None:
        for kind, items in (("known", SCAN_KNOWN), ("untaught", SCAN_UNTAUGHT), ("none", SCAN_EVERYDAY)):
            used: dict[str, int] = {}
            for item in items:
                if kind == "none":
                    source, where, landmark = self.pools.take(item), offset_m(HOME, 0, 0), None
                else:
                    photos = self.pools.landmark(kind, item)
                    source = photos[used.get(item, 0)]
                    used[item] = used.get(item, 0) + 1
                    where = offset_m(self.known[item] if kind == "known" else UNTAUGHT[item],
                                     self.rng.gauss(0, 200), self.rng.gauss(0, 200))
                    landmark = item
                self.shots.append(Shot("scan", None, *where, kind, landmark,
                                       source, "scan", "scanned print", None))
