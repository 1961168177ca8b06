"""The landmark location data file and its helpers."""
from __future__ import annotations

import json
import re

import pytest

from src.landmarks import (LANDMARKS_FILE, describe, display_name, format_latlon, landmark_info, load_landmarks,
                           parse_xmp_gps_coordinate, xmp_gps_coordinate)

COURSE_CLASSES = """00.Haleakala_National_Park 01.Mount_Rainier_National_Park 02.Ljubljana_Castle 03.Dead_Sea
04.Wroclaws_Dwarves 05.London_Olympic_Stadium 06.Niagara_Falls 07.Stonehenge 08.Grand_Canyon 09.Golden_Gate_Bridge
10.Edinburgh_Castle 11.Mount_Rushmore_National_Memorial 12.Kantanagar_Temple 13.Yellowstone_National_Park
14.Terminal_Tower 15.Central_Park 16.Eiffel_Tower 17.Changdeokgung 18.Delicate_Arch 19.Vienna_City_Hall
20.Matterhorn 21.Taj_Mahal 22.Moscow_Raceway 23.Externsteine 24.Soreq_Cave 25.Banff_National_Park 26.Pont_du_Gard
27.Seattle_Japanese_Garden 28.Sydney_Harbour_Bridge 29.Petronas_Towers 30.Brooklyn_Bridge 31.Washington_Monument
32.Hanging_Temple 33.Sydney_Opera_House 34.Great_Barrier_Reef 35.Monumento_a_la_Revolucion
36.Badlands_National_Park 37.Atomium 38.Forth_Bridge 39.Gateway_of_India 40.Stockholm_City_Hall 41.Machu_Picchu
42.Death_Valley_National_Park 43.Gullfoss_Falls 44.Trevi_Fountain 45.Temple_of_Heaven 46.Great_Wall_of_China
47.Prague_Astronomical_Clock 48.Whitby_Abbey 49.Temple_of_Olympian_Zeus""".split()

DEV_CLASSES = """00.Alhambra_Palace 01.Angkor_Wat 02.Chichen_Itza 03.Cologne_Cathedral 04.Colosseum_Rome
05.Dome_Of_The_Rock 06.Forbidden_City 07.Great_Pyramid_Of_Giza 08.Hagia_Sophia 09.Machu_Picchu
10.Palace_Of_Versailles 11.Petra_Jordan 12.Taj_Mahal""".split()

# Coarse (lat_min, lat_max, lon_min, lon_max) boxes: a swapped sign or lat/lon mix-up lands outside its country.
COUNTRY_BOXES = {
    "United States": (18.5, 72.0, -180.0, -66.0), "Slovenia": (45.4, 46.9, 13.3, 16.6),
    "Jordan": (29.1, 33.4, 34.9, 39.3), "Israel": (29.4, 33.4, 34.2, 35.9), "West Bank": (31.3, 32.6, 34.9, 35.6),
    "Poland": (49.0, 54.9, 14.1, 24.2), "United Kingdom": (49.9, 60.9, -8.7, 1.8),
    "Canada": (41.6, 83.2, -141.1, -52.6),
    "Bangladesh": (20.6, 26.7, 88.0, 92.7), "France": (41.3, 51.1, -5.2, 9.6),
    "South Korea": (33.1, 38.7, 124.6, 131.9),
    "Austria": (46.3, 49.1, 9.5, 17.2), "Switzerland": (45.8, 47.9, 5.9, 10.5), "Italy": (35.5, 47.1, 6.6, 18.6),
    "India": (6.7, 35.7, 68.1, 97.4), "Russia": (41.2, 81.9, 19.6, 180.0), "Germany": (47.3, 55.1, 5.8, 15.1),
    "Australia": (-43.7, -10.0, 112.9, 153.7), "Malaysia": (0.8, 7.4, 99.6, 119.3), "China": (18.1, 53.6, 73.5, 134.8),
    "Mexico": (14.5, 32.8, -118.5, -86.7), "Belgium": (49.5, 51.6, 2.5, 6.4), "Sweden": (55.3, 69.1, 11.0, 24.2),
    "Peru": (-18.4, -0.0, -81.4, -68.6), "Iceland": (63.2, 66.6, -24.6, -13.4),
    "Czech Republic": (48.5, 51.1, 12.0, 18.9),
    "Greece": (34.8, 41.8, 19.3, 29.7), "Spain": (27.6, 43.8, -18.2, 4.4), "Cambodia": (10.4, 14.7, 102.3, 107.7),
    "Egypt": (22.0, 31.7, 24.7, 36.9), "Turkey": (35.8, 42.2, 25.6, 44.9),
    "Jerusalem (Old City)": (31.76, 31.79, 35.22, 35.24),
}


def test_every_course_and_dev_class_has_a_complete_entry():
    data = load_landmarks()
    assert len(COURSE_CLASSES) == 50 and len(DEV_CLASSES) == 13
    for key in COURSE_CLASSES + DEV_CLASSES:
        info = data[key]
        assert info["name"].strip() and info["city"].strip() and info["country"].strip(), key
        assert -90 <= info["lat"] <= 90 and -180 <= info["lon"] <= 180, key
        for coord in (info["lat"], info["lon"]):
            assert round(coord, 4) == coord, f"{key}: {coord} has more than 4 decimals"
    assert set(data) == set(COURSE_CLASSES) | set(DEV_CLASSES)


def test_natural_areas_say_which_point_they_use():
    data = load_landmarks()
    for key in COURSE_CLASSES:
        if re.search(r"National_Park|Reef|Dead_Sea|Great_Wall|Grand_Canyon", key):
            assert "note" in data[key] and data[key]["note"].strip(), f"{key} needs a note on its representative point"


@pytest.mark.parametrize("key", COURSE_CLASSES + DEV_CLASSES)
def test_coordinates_lie_in_the_named_country(key):
    info = load_landmarks()[key]
    boxes = [COUNTRY_BOXES[part.strip()] for part in info["country"].split("/")]
    assert any(b[0] <= info["lat"] <= b[1] and b[2] <= info["lon"] <= b[3] for b in boxes), (
        f"{key} at {info['lat']}, {info['lon']} is outside {info['country']}")


def test_known_facts():
    gg = landmark_info("09.Golden_Gate_Bridge")
    assert (gg["lat"], gg["lon"], gg["city"]) == (37.8199, -122.4783, "San Francisco")
    assert describe("09.Golden_Gate_Bridge", 0.93) == "Golden Gate Bridge, San Francisco, 37.8199 N, 122.4783 W, 0.93"
    eiffel = landmark_info("16.Eiffel_Tower")
    assert eiffel["country"] == "France" and abs(eiffel["lat"] - 48.8584) < 1e-3 and abs(eiffel["lon"] - 2.2945) < 1e-3
    opera = landmark_info("33.Sydney_Opera_House")
    assert opera["lat"] < 0 and opera["lon"] > 0  # southern and eastern hemispheres
    assert format_latlon(-33.8568, 151.2153) == "33.8568 S, 151.2153 E"


def test_unknown_classes_work_without_a_location():
    assert landmark_info("07.My_Back_Garden") is None
    assert display_name("07.My_Back_Garden") == "My Back Garden"
    assert describe("07.My_Back_Garden", 0.5) == "My Back Garden, 0.50"
    # a user's own numbering of a known landmark still finds it
    assert landmark_info("03.Golden_Gate_Bridge")["lat"] == 37.8199
    assert landmark_info("Eiffel_Tower")["city"] == "Paris"
    # results are copies: changing one does not change the table
    landmark_info("09.Golden_Gate_Bridge")["lat"] = 0.0
    assert landmark_info("09.Golden_Gate_Bridge")["lat"] == 37.8199


def test_dev_data_folders_are_covered(shared_data):
    for split in ("train", "test"):
        for folder in sorted(p.name for p in (shared_data / split).iterdir() if p.is_dir()):
            assert landmark_info(folder) is not None, folder
            assert folder in load_landmarks(), f"{folder} should be keyed by its exact folder name"


def test_file_is_valid_json_with_an_explanation():
    doc = json.loads(LANDMARKS_FILE.read_text(encoding="utf-8"))
    assert "_about" in doc and "landmarks" in doc


@pytest.mark.parametrize("value,is_lat,text", [
    (37.8199, True, "37,49.1940N"), (-122.4783, False, "122,28.6980W"), (-33.8568, True, "33,51.4080S"),
    (0.0, False, "0,0.0000E"), (59.99999999, True, "60,0.0000N"),
])
def test_xmp_gps_coordinates(value, is_lat, text):
    assert xmp_gps_coordinate(value, is_lat) == text
    assert parse_xmp_gps_coordinate(text) == pytest.approx(value, abs=1e-6)
    assert parse_xmp_gps_coordinate("37,49,11.64N") == pytest.approx(37.8199, abs=1e-6)
