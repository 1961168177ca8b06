"""What ``tag`` writes into photo metadata for a row of its CSV, and the change that takes a file there.

Pure functions over dicts (no ExifTool, no files): :mod:`src.metadata` reads a file's XMP, asks
:func:`plan_changes` what to assign and delete, and writes it. What is ours is recorded in our own namespace
(``XMP-LandmarkTagger``): a later run replaces or removes exactly that, never a value someone else wrote.

A row gives two things that are written independently:
- a **landmark** (status ``ok``): ``Iptc4xmpExt:LocationShown``, ``photoshop:City/Country``, keywords;
- a **place** (``lat``/``lon`` with ``location_source``): ``exif:GPSLatitude/Longitude`` and, for an estimate,
  ``exif:GPSHPositioningError`` (its accuracy radius in metres), with where it came from in
  ``LandmarkTagger:GPSSource``. A place is only ever written where the file has no position of its own.
"""
from __future__ import annotations

import math

from .landmarks import landmark_info

CREATOR_TOOL = "landmark-tagger"
NS = "XMP-LandmarkTagger"
LOCATION_ID_PREFIX = "urn:landmark-tagger:landmark:"  # marks the LocationShown entries that are ours
LOCATION_SHOWN = "XMP-iptcExt:LocationShown"
GPS_TAGS = ("XMP-exif:GPSLatitude", "XMP-exif:GPSLongitude", "XMP-exif:GPSMapDatum", "XMP-exif:GPSVersionID",
            "XMP-exif:GPSHPositioningError")
# list field -> the field of our namespace that records which of its items we added
LIST_TAGS = {"XMP-dc:Subject": "Keywords", "XMP-lr:HierarchicalSubject": "HierarchicalSubject",
             "XMP-digiKam:TagsList": "TagsList"}
WRITE_STATUSES = ("ok",)  # a landmark only for these; "no_known_landmark", "error" remove the landmark we wrote
# location_source -> what LandmarkTagger:GPSSource says of a position we wrote (the evidence follows it)
GPS_PHRASES = {"camera": "copied from the photo's own EXIF GPS", "landmark": "inferred from the landmark",
               "landmark+time": "the landmark's place, agreeing with the capture time",
               "time": "estimated from the capture time", "track": "from a GPS track"}
ESTIMATED_SOURCES = ("landmark", "landmark+time", "time", "track")  # never "camera": the photo has that already
# tag CSVs written before location_source existed said where a position came from in gps_source
_LEGACY_SOURCES = {"exif": "camera", "landmark": "landmark"}


def location_source(row: dict) -> str:
    """Where a row's position came from (``camera``, ``track``, ``time``, ``landmark``, ``landmark+time``), or
    ``""`` when it has none."""
    source = row.get("location_source") or _LEGACY_SOURCES.get(row.get("gps_source") or "", "")
    return "" if source == "none" or not (row.get("lat") and row.get("lon")) else source



def _as_list(value) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list) else [value]


def _norm(value):
    """For comparing what a file holds with what we would write: numbers by value, bags as multisets."""
    if isinstance(value, dict):
        return tuple(sorted((k, _norm(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(sorted((_norm(v) for v in value), key=repr))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return round(number, 6) if math.isfinite(number) else str(value)  # a keyword "NaN" is a word


def _fmt(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _place_part(text: str) -> str:
    """A level of ``Places|Country|City|Landmark``: no separator of either hierarchy (``|``, ``/``) inside."""
    return " & ".join(p.strip() for p in text.replace("|", "/").split("/") if p.strip())


def wanted_fields(row: dict, provenance: dict, with_gps: bool = True) -> dict | None:
    """Our fields for a tag row: ``{"single": {tag: value}, "lists": {tag: [items]}, "location": struct or None,
    "provenance": {field: value}, "gps_phrase": str, "location_source": str}``; ``None`` when the row has
    neither a landmark nor a place to write."""
    landmark = row.get("status") in WRITE_STATUSES and bool(row.get("landmark"))
    source = location_source(row)
    place = with_gps and source in GPS_PHRASES
    if not landmark and not (place and source != "camera"):
        return None  # a camera position alone is in the photo already; a sidecar copy of it goes with a landmark
    single: dict[str, str] = {}
    lists: dict[str, list] = {tag: [] for tag in LIST_TAGS}
    location = None
    name = row.get("landmark") or ""
    if landmark:
        city, country = row.get("city") or "", row.get("country") or ""
        info = landmark_info(row["class"]) if row.get("class") else None
        if city:
            single["XMP-photoshop:City"] = city
        if country:
            single["XMP-photoshop:Country"] = country
        countries = [c.strip() for c in country.split("/") if c.strip()]
        keywords = list(dict.fromkeys(k for k in (name, city, *countries) if k))
        parts = [_place_part(p) for p in ("Places", country, city, name) if p and _place_part(p)]
        lists = {"XMP-dc:Subject": keywords, "XMP-lr:HierarchicalSubject": ["|".join(parts)],
                 "XMP-digiKam:TagsList": ["/".join(parts)]}
        location = {"LocationName": name, "Identifier": [LOCATION_ID_PREFIX + (row.get("class") or name)]}
        if city:
            location["City"] = city
        if country:
            location["CountryName"] = country
        # LocationShown is where the landmark is (the camera may have stood elsewhere: that is exif:GPS)
        where = (info["lat"], info["lon"]) if info else (
            (float(row["lat"]), float(row["lon"])) if source.startswith("landmark") else None)
        if where is not None:
            location.update(GPSLatitude=_fmt(where[0]), GPSLongitude=_fmt(where[1]))
    if place:
        single.update({"XMP-exif:GPSLatitude": _fmt(float(row["lat"])),
                       "XMP-exif:GPSLongitude": _fmt(float(row["lon"])),
                       "XMP-exif:GPSMapDatum": "WGS-84", "XMP-exif:GPSVersionID": "2.2.0.0"})
        if source != "camera" and row.get("accuracy_m"):
            single["XMP-exif:GPSHPositioningError"] = _fmt(round(float(row["accuracy_m"])))
    phrase = GPS_PHRASES.get(source, "")
    if phrase and source != "camera" and row.get("evidence"):
        phrase += f" ({row['evidence']})"
    prov = {"Tool": provenance.get("tool") or CREATOR_TOOL, "Model": provenance.get("model"),
            "ModelSHA256": provenance.get("model_sha256"), "Method": provenance.get("method"),
            "Threshold": provenance.get("threshold"), "Confidence": (row.get("prob") or None) if landmark else None,
            "Landmark": name if landmark else None, "LandmarkClass": (row.get("class") or None) if landmark else None}
    if landmark:
        prov["LocationSource"] = "inferred from the landmark"
    return {"single": single, "lists": lists, "location": location, "gps_phrase": phrase, "location_source": source,
            "provenance": {k: str(v) for k, v in prov.items() if v is not None and v != ""}}


def plan_changes(current: dict, wanted: dict | None, gps_allowed: bool = True) -> tuple[dict, list[str]]:
    """``(assign, delete)``: the ExifTool changes that take a file holding ``current`` (from :func:`_read`) to
    "its own fields plus ours", ours replaced by ``wanted`` (``None``: ours removed). Empty when nothing changes.

    We replace or remove only what we recorded as ours and nobody changed since; we fill a field only when it is
    empty, and GPS only when the file has no position at all (neither XMP nor, in a photo, EXIF).
    """
    ours_single = {}
    for item in _as_list(current.get(f"{NS}:Fields")):
        tag, _, value = str(item).partition("=")
        if tag in current and _norm(current[tag]) == _norm(value):
            ours_single[tag] = value
    state = {k: v for k, v in current.items() if k not in ours_single and not k.startswith(NS + ":")}
    for tag, record in LIST_TAGS.items():
        ours = {str(v) for v in _as_list(current.get(f"{NS}:{record}"))}
        state[tag] = [v for v in _as_list(current.get(tag)) if str(v) not in ours]
    state[LOCATION_SHOWN] = [s for s in _as_list(current.get(LOCATION_SHOWN)) if not _is_ours(s)]

    if wanted is not None:
        fields = []
        has_position = any(k in state for k in ("XMP-exif:GPSLatitude", "XMP-exif:GPSLongitude", "GPS:GPSLatitude"))
        for tag, value in wanted["single"].items():
            if tag in state or (tag in GPS_TAGS and (has_position or not gps_allowed)):
                continue  # someone else's value (a camera's or a person's location) stays
            state[tag] = value
            fields.append(f"{tag}={value}")
        for tag, items in wanted["lists"].items():
            present = {str(v) for v in state[tag]}
            added = [v for v in items if v not in present]  # a keyword the user already had stays theirs
            state[tag] = state[tag] + added
            if added:
                state[f"{NS}:{LIST_TAGS[tag]}"] = added
        if wanted["location"] is not None:
            state[LOCATION_SHOWN] = state[LOCATION_SHOWN] + [dict(wanted["location"])]
        for key, value in wanted["provenance"].items():
            state[f"{NS}:{key}"] = value
        if any(f.startswith("XMP-exif:GPSLatitude=") for f in fields):
            state[f"{NS}:GPSSource"] = wanted["gps_phrase"]
        if fields:
            state[f"{NS}:Fields"] = fields

    assign, delete = {}, []
    for tag in sorted(set(current) | set(state)):
        if tag.startswith("GPS:") or tag == "XMP-x:XMPToolkit":
            continue
        old, new = current.get(tag), state.get(tag)
        if _as_list(new) == []:
            if _as_list(old) != []:
                delete.append(tag)
        elif old is None or _norm(old) != _norm(new):
            assign[tag] = new
    return assign, delete


def _adopt_earlier_version(current: dict) -> dict:
    """A sidecar written whole by this tool before it recorded its fields (``xmp:CreatorTool`` is ours, no
    ``LandmarkTagger`` namespace): all of it is ours, to replace or remove like the rest."""
    if current.get("XMP-xmp:CreatorTool") != CREATOR_TOOL or any(k.startswith(NS + ":") for k in current):
        return current
    adopted = dict(current)
    singles = (*GPS_TAGS, "XMP-photoshop:City", "XMP-photoshop:Country", "XMP-xmp:CreatorTool")
    adopted[f"{NS}:Fields"] = [f"{tag}={current[tag]}" for tag in singles if tag in current]
    adopted[f"{NS}:Keywords"] = _as_list(current.get("XMP-dc:Subject"))
    return adopted


def _is_ours(location) -> bool:
    return isinstance(location, dict) and any(str(i).startswith(LOCATION_ID_PREFIX)
                                              for i in _as_list(location.get("Identifier")))


def _meaningful(data: dict) -> bool:
    """Whether a file's XMP holds anything beyond the toolkit's name."""
    return any(k.startswith("XMP") and k != "XMP-x:XMPToolkit" for k in data)
