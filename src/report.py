"""``python -m src report tags.csv --photos DIR --out library.html``: one self-contained page picturing a tagged
photo library: a map (Leaflet through folium, one marker cluster per landmark, a thumbnail and the photo's name in
each popup), a gallery grouped by landmark, and the counts (tagged, no known landmark, errors).

Thumbnails are embedded as data URIs once (in the gallery; a popup borrows its image when opened) and Leaflet and
its clustering plugin are inlined from ``src/report_assets``: the page opens offline, apart from the map tiles
(OpenStreetMap), which a browser fetches as the map is viewed.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import os
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import folium
from folium.plugins import MarkerCluster

from .helpers import atomic_write_text, ensure_writable_dir
from .images import ImageLoadError, open_image
from .metadata_fields import location_source

ASSETS = Path(__file__).resolve().with_name("report_assets")
# folium's CDN links -> the local copies that replace them (the page must not need the network for its code)
_CDN = {
    "https://cdn.jsdelivr.net/npm/leaflet@1.9.4/dist/leaflet.js": "leaflet.js",
    "https://cdn.jsdelivr.net/npm/leaflet@1.9.4/dist/leaflet.css": "leaflet.css",
    "https://cdn.jsdelivr.net/npm/leaflet.markercluster@1.5.3/dist/leaflet.markercluster.js":
        "leaflet.markercluster.js",
    "https://cdn.jsdelivr.net/npm/leaflet.markercluster@1.5.3/dist/MarkerCluster.css": "MarkerCluster.css",
    "https://cdn.jsdelivr.net/npm/leaflet.markercluster@1.5.3/dist/MarkerCluster.Default.css":
        "MarkerCluster.Default.css",
}
_URL_OF = {name: url for url, name in _CDN.items()}
NO_LANDMARK_STATUSES = ("no_known_landmark", "low_confidence")
NO_LANDMARK_GROUP = "No known landmark"
COLOURS = ["#d7263d", "#1b998b", "#2e86ab", "#f46036", "#7b2cbf", "#3a7d44", "#c5283d", "#e9724c", "#255f85",
           "#8e6c8a", "#5f0f40", "#0f4c5c"]
TILE_HOSTS = ("tile.openstreetmap.org",)  # the only thing the page fetches from the network
# Where a place came from -> (legend text, pin CSS class): measured places are filled dots, estimates are drawn
# apart (a ring for the capture time, a square for a track, a diamond for a landmark) with their accuracy radius.
SOURCES = {"camera": ("camera GPS", "lt-pin"), "track": ("GPS track", "lt-pin lt-track"),
           "time": ("estimated from the capture time", "lt-pin lt-time"),
           "landmark+time": ("landmark, agreeing with the capture time", "lt-pin lt-landmark"),
           "landmark": ("landmark location", "lt-pin lt-landmark")}


class _Map(folium.Map):
    # only Leaflet: folium's default jQuery/Bootstrap/Font Awesome are not used by this page
    default_js = [("leaflet", _URL_OF["leaflet.js"])]
    default_css = [("leaflet_css", _URL_OF["leaflet.css"])]


class _Clusters(MarkerCluster):
    default_js = [("markerclusterjs", _URL_OF["leaflet.markercluster.js"])]
    default_css = [("markerclustercss", _URL_OF["MarkerCluster.css"]),
                   ("markerclusterdefaultcss", _URL_OF["MarkerCluster.Default.css"])]


@dataclass
class Photo:
    row: dict
    index: int
    thumbnail: str | None = None  # data URI
    problem: str | None = None  # why there is no thumbnail

    @property
    def name(self) -> str:
        return self.row["path"]

    @property
    def position(self) -> tuple[float, float] | None:
        try:
            lat, lon = float(self.row.get("lat") or "nan"), float(self.row.get("lon") or "nan")
        except ValueError:
            return None
        return (lat, lon) if -90 <= lat <= 90 and -180 <= lon <= 180 else None


@dataclass
class ReportSummary:
    photos: int = 0
    tagged: int = 0
    no_landmark: int = 0
    errors: int = 0
    on_map: int = 0
    landmarks: list[str] = field(default_factory=list)
    missing_thumbnails: int = 0
    size_bytes: int = 0
    by_source: dict = field(default_factory=dict)  # location_source -> photos on the map
    threshold_note: str = ""  # how the photos were decided (tag's record)


def read_tag_rows(path: Path) -> list[dict]:
    """Rows of a tag CSV; a file without its ``path`` and ``status`` columns is refused with one line."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: cannot be read as a tag CSV ({getattr(exc, 'strerror', None) or exc})") from None
    if "path" not in columns or "status" not in columns:
        raise ValueError(f"{path}: not a tag CSV written by python -m src tag (no path/status columns)")
    return [r for r in rows if r.get("path")]


def run_info(csv_path: Path, key: str):
    """What ``tag`` recorded beside its CSV under ``key`` (``tags.csv.json``, or ``tags.json`` of older runs)."""
    for record in (csv_path.with_name(csv_path.name + ".json"), csv_path.with_suffix(".json")):
        try:
            value = json.loads(record.read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return value
    return None


def photos_folder(csv_path: Path, photos: str | None) -> Path:
    """``--photos``, else the folder ``tag`` recorded beside its CSV (``tags.csv.json`` or ``tags.json``,
    key ``"folder"``)."""
    if photos:
        return Path(photos)
    folder = run_info(csv_path, "folder")
    if folder:
        return Path(folder)
    raise ValueError(f"{csv_path}: which folder are its photos in? Give --photos DIR (tag records it in "
                     f"{csv_path.name}.json; there is none)")


def threshold_note(csv_path: Path, rows: list[dict]) -> str:
    """How the photos were decided, from what ``tag`` recorded beside its CSV (the threshold and whether it was
    calibrated, on what); the CSV's own threshold column when that record is missing."""
    note = run_info(csv_path, "threshold_note")
    if note:
        return note
    values = sorted({r.get("threshold") for r in rows if r.get("threshold")})
    return (f"threshold {', '.join(values) or 'unknown'}: how it was chosen was not recorded (tag the photos again "
            f"to record it)")


def thumbnail(path: Path, size: int) -> str:
    """A small JPEG of the photo (orientation applied) as a data URI."""
    img = open_image(path, draft_size=size)
    img.thumbnail((size, size))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=72, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _make_thumbnails(photos: list[Photo], folder: Path, size: int, workers: int) -> None:
    def one(photo: Photo) -> None:
        try:
            photo.thumbnail = thumbnail(folder / photo.name, size)
        except ImageLoadError as exc:
            photo.problem = str(exc)
        except Exception as exc:  # one photo never stops the page  # noqa: BLE001
            photo.problem = f"{folder / photo.name}: {type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # Pillow decodes without the GIL
        list(pool.map(one, photos))


def group_of(row: dict) -> str:
    return (row.get("landmark") or "?") if row["status"] == "ok" else NO_LANDMARK_GROUP


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "group"


def where_text(row: dict) -> str:
    """How a photo's place was found, for people: ``"estimated from the capture time (IMG_1.JPG, 4 min
    earlier), within 350 m"``."""
    source = location_source(row)
    text = SOURCES.get(source, ("", ""))[0] or source
    if row.get("evidence") and source not in ("camera", ""):
        text += f" ({row['evidence']})"
    if row.get("accuracy_m") and source != "camera":
        metres = float(row["accuracy_m"])
        text += f", within {metres / 1000:.1f} km" if metres >= 1000 else f", within {metres:.0f} m"
    return text


def build_map(groups: dict[str, list[Photo]], colours: dict[str, str]) -> tuple[folium.Figure, _Map, int]:
    placed = [(name, p) for name, members in groups.items() for p in members if p.position is not None]
    fig = folium.Figure()
    fmap = _Map(location=[20, 0], zoom_start=2, height="62vh", tiles="OpenStreetMap", control_scale=True)
    fmap.add_to(fig)
    # the accuracy of every estimated place, a circle of its radius; a layer of its own (off when it clutters)
    radii = folium.FeatureGroup(name="accuracy of estimated places", show=True)
    for _, photo in placed:
        source = location_source(photo.row)
        if source not in ("camera", "") and photo.row.get("accuracy_m"):
            folium.Circle(photo.position, radius=float(photo.row["accuracy_m"]), weight=1, fill=True,
                          fill_opacity=0.08, opacity=0.5, color="#1f2933",
                          tooltip=f"{_e(photo.name)}: {_e(where_text(photo.row))}").add_to(radii)
    if radii._children:
        radii.add_to(fmap)
    for name, members in groups.items():
        located = [p for p in members if p.position is not None]
        if not located:
            continue
        colour = colours[name]
        cluster = _Clusters(name=name, icon_create_function=(
            "function(cluster) { return L.divIcon({html: '<div class=\"lt-cluster\" data-landmark=\"" +
            _e(name).replace("'", "&#x27;") + f"\" style=\"background:{colour}\">' + cluster.getChildCount() + "
            "'</div>', className: 'lt-cluster-icon', iconSize: L.point(36, 36)}); }"))
        cluster.add_to(fmap)
        for photo in located:
            image = (f'<img class="lt-popup-img" data-ref="thumb-{photo.index}" alt="{_e(photo.name)}">'
                     if photo.thumbnail else "")
            detail = name if name == NO_LANDMARK_GROUP else f"{name} ({float(photo.row.get('prob') or 0):.0%})"
            source = location_source(photo.row)
            pin = SOURCES.get(source, ("", "lt-pin"))[1]
            popup = (f'<div class="lt-popup">{image}<div class="lt-popup-name">{_e(photo.name)}</div>'
                     f'<div class="lt-popup-detail">{_e(detail)} · {_e(where_text(photo.row))}</div></div>')
            folium.Marker(photo.position, popup=folium.Popup(popup, max_width=260), tooltip=_e(photo.name),
                          icon=folium.DivIcon(html=f'<div class="{pin}" data-source="{_e(source)}" '
                                                   f'style="--c:{colour}"></div>',
                                              icon_size=(14, 14), icon_anchor=(7, 7), class_name="lt-pin-icon"),
                          ).add_to(cluster)
    if placed:
        lats = [p.position[0] for _, p in placed]
        lons = [p.position[1] for _, p in placed]
        fmap.fit_bounds([[min(lats), min(lons)], [max(lats), max(lons)]], padding=(30, 30), max_zoom=12)
    return fig, fmap, len(placed)


PAGE_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; }
header { padding: 12px 20px; background: #1f2933; color: #fff; }
header h1 { margin: 0 0 4px 0; font-size: 1.4rem; }
.lt-counts span { display: inline-block; margin-right: 18px; }
.lt-counts b { font-size: 1.15rem; }
main { padding: 0 20px 30px 20px; }
.lt-group h2 { font-size: 1.1rem; margin: 22px 0 8px 0; border-left: 8px solid var(--c); padding-left: 8px; }
.lt-group h2 small { font-weight: normal; color: #666; }
.lt-thumbs { display: flex; flex-wrap: wrap; gap: 8px; }
.lt-thumbs figure { margin: 0; width: 132px; }
.lt-thumbs img { width: 132px; height: 100px; object-fit: cover; border-radius: 4px; background: #eee; }
.lt-thumbs figcaption { font-size: 0.72rem; overflow-wrap: anywhere; color: #444; }
.lt-missing { width: 132px; height: 100px; background: #eee; display: flex; align-items: center;
  justify-content: center; font-size: 0.7rem; color: #888; border-radius: 4px; text-align: center; }
.lt-threshold { padding: 6px 20px; font-size: 0.85rem; background: #eef2f6; }
.lt-warn { background: #fdecea; color: #8a1c1c; font-weight: bold; }
.lt-errors li { font-family: ui-monospace, monospace; font-size: 0.8rem; }
.lt-pin, .lt-key { width: 14px; height: 14px; border-radius: 50%; border: 2px solid #fff; box-shadow: 0 0 3px #000;
  box-sizing: border-box; background: var(--c); }
.lt-time { background: #fff; border: 4px solid var(--c); }
.lt-track { border-radius: 2px; }
.lt-landmark { border-radius: 2px; transform: rotate(45deg); }
.lt-legend span { display: inline-flex; align-items: center; gap: 5px; margin-right: 16px; font-size: 0.85rem; }
.lt-key { --c: #9aa5b1; display: inline-block; box-shadow: none; }
.lt-pin-icon, .lt-cluster-icon { background: none; border: none; }
.lt-cluster { width: 36px; height: 36px; border-radius: 50%; color: #fff; font-weight: bold; display: flex;
  align-items: center; justify-content: center; border: 3px solid rgba(255,255,255,0.8); box-sizing: border-box; }
.lt-popup img { max-width: 200px; max-height: 150px; display: block; margin-bottom: 4px; }
.lt-popup-name { font-weight: bold; overflow-wrap: anywhere; }
.lt-popup-detail { color: #555; }
"""

# folium builds popup contents with jQuery's ``$(html)[0]``; this page does not load jQuery (90 kB for one call).
JQUERY_STANDIN = """<script>
if (!window.$) { window.$ = function (markup) { var box = document.createElement("template");
  box.innerHTML = markup.trim(); return [box.content.firstElementChild]; }; }
</script>"""

# A popup borrows its thumbnail from the gallery when it opens (each image is in the page once).
POPUP_JS = """
<script>
window.addEventListener("load", function () {
  var map = window[%s];
  map.on("popupopen", function (event) {
    event.popup.getElement().querySelectorAll("img[data-ref]").forEach(function (img) {
      var source = document.getElementById(img.dataset.ref);
      if (source) { img.src = source.src; }
    });
  });
});
</script>
"""


def _gallery(groups: dict[str, list[Photo]], colours: dict[str, str], errors: list[Photo]) -> str:
    parts = []
    for name, members in groups.items():
        first = members[0].row
        where = "" if name == NO_LANDMARK_GROUP else ", ".join(v for v in (first.get("city"), first.get("country"))
                                                                 if v)
        figures = []
        for p in members:
            prob = "" if name == NO_LANDMARK_GROUP else f" · {float(p.row.get('prob') or 0):.0%}"
            image = (f'<img id="thumb-{p.index}" src="{p.thumbnail}" alt="{_e(p.name)}" loading="lazy">'
                     if p.thumbnail else f'<div class="lt-missing" title="{_e(p.problem)}">no preview</div>')
            figures.append(f'<figure data-photo="{_e(p.name)}">{image}<figcaption>{_e(p.name)}{prob}'
                           "</figcaption></figure>")
        parts.append(f'<section class="lt-group" id="group-{_slug(name)}" data-landmark="{_e(name)}" '
                     f'style="--c:{colours.get(name, "#999")}"><h2>{_e(name)} <small>{len(members)} photo'
                     f'{"s" if len(members) != 1 else ""}{" · " + _e(where) if where else ""}</small></h2>'
                     f'<div class="lt-thumbs">{"".join(figures)}</div></section>')
    if errors:
        items = "".join(f"<li>{_e(p.name)}: {_e(p.row.get('error') or 'error')}</li>" for p in errors)
        parts.append(f'<section class="lt-group lt-errors" id="group-errors" style="--c:#555"><h2>Not tagged '
                     f"<small>{len(errors)} file{'s' if len(errors) != 1 else ''} that could not be read</small>"
                     f"</h2><ul>{items}</ul></section>")
    return "\n".join(parts)


def _inline_assets(page: str) -> str:
    """Swap the CDN ``<script src>``/``<link href>`` of Leaflet and MarkerCluster for the files' contents."""
    for url, name in _CDN.items():
        content = (ASSETS / name).read_text(encoding="utf-8")
        if name.endswith(".js"):
            code = content.replace("</script", "<\\/script")  # the file cannot end the page's script element
            page = re.sub(rf'<script src="{re.escape(url)}"></script>',
                          lambda _m: f"<script>/* {name} */\n{code}\n</script>", page)
        else:
            page = re.sub(rf'<link rel="stylesheet" href="{re.escape(url)}"\s*/>',
                          lambda _m: f"<style>/* {name} */\n{content}\n</style>", page)
    leftover = re.findall(r'<(?:script|link)[^>]*(?:src|href)="(https?://[^"]+)"', page)
    if leftover:  # a folium upgrade added a dependency: better a clear failure than a page that needs the network
        raise RuntimeError(f"the library page would load {leftover[0]} from the network; add it to src/report_assets")
    return page


def build_report(csv_path: str | os.PathLike, photos: str | os.PathLike | None = None,
                 out: str | os.PathLike | None = None, thumb_size: int = 160,
                 workers: int | None = None) -> ReportSummary:
    """Write the library page for a tag CSV; see the module's docstring. Returns the counts it shows."""
    csv_path = Path(csv_path)
    out = Path(out) if out else csv_path.with_suffix(".html")
    rows = read_tag_rows(csv_path)
    folder = photos_folder(csv_path, str(photos) if photos else None)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (the photos of {csv_path})")
    ensure_writable_dir(out.parent)
    everything = [Photo(row, i) for i, row in enumerate(sorted(rows, key=lambda r: r["path"]))]
    errors = [p for p in everything if p.row["status"] == "error"]
    shown = [p for p in everything if p.row["status"] != "error"]
    _make_thumbnails(shown, folder, thumb_size, workers or min(8, os.cpu_count() or 1))

    sizes = Counter(group_of(p.row) for p in shown)
    order = sorted((g for g in sizes if g != NO_LANDMARK_GROUP), key=lambda g: (-sizes[g], g))
    order += [NO_LANDMARK_GROUP] if NO_LANDMARK_GROUP in sizes else []
    groups = {g: [p for p in shown if group_of(p.row) == g] for g in order}
    colours = {g: ("#6b7280" if g == NO_LANDMARK_GROUP else COLOURS[i % len(COLOURS)]) for i, g in enumerate(order)}
    summary = ReportSummary(photos=len(everything), tagged=sum(p.row["status"] == "ok" for p in everything),
                            no_landmark=sum(p.row["status"] in NO_LANDMARK_STATUSES for p in everything),
                            errors=len(errors), landmarks=[g for g in order if g != NO_LANDMARK_GROUP],
                            missing_thumbnails=sum(p.thumbnail is None for p in shown))

    fig, fmap, summary.on_map = build_map(groups, colours)
    title = f"Photo library: {csv_path.name}"
    fig.header.add_child(folium.Element(f"<title>{_e(title)}</title><style>{PAGE_CSS}</style>{JQUERY_STANDIN}"),
                         name="lt_head")
    counts = (f'<div class="lt-counts"><span><b id="count-photos">{summary.photos}</b> photos</span>'
              f'<span><b id="count-tagged">{summary.tagged}</b> tagged with a landmark '
              f"({len(summary.landmarks)} landmarks)</span>"
              f'<span><b id="count-no-landmark">{summary.no_landmark}</b> no known landmark</span>'
              f'<span><b id="count-errors">{summary.errors}</b> errors</span>'
              f'<span><b id="count-on-map">{summary.on_map}</b> on the map</span></div>')
    by_source = Counter(location_source(p.row) for p in shown if p.position is not None)
    summary.by_source = {k: by_source[k] for k in SOURCES if by_source[k]}
    keys = {k: SOURCES[k][1].replace("lt-pin", "lt-key") for k in summary.by_source}
    legend = "".join(f'<span data-source="{_e(k)}"><i class="{keys[k]}"></i>{_e(SOURCES[k][0])}: <b>{n}</b></span>'
                     for k, n in summary.by_source.items())
    legend = f'<div class="lt-legend">{legend}</div>' if legend else ""
    header = (f"<header><h1>{_e(title)}</h1><div>{_e(folder)}</div>{counts}{legend}</header>")
    fig.html.add_child(folium.Element(header), name="lt_header", index=0)
    summary.threshold_note = threshold_note(csv_path, rows)
    warn = "UNCALIBRATED" in summary.threshold_note or "not recorded" in summary.threshold_note
    fig.html.add_child(folium.Element(  # said with the decisions, as everywhere they are shown
        f'<div id="threshold-note" class="lt-threshold{" lt-warn" if warn else ""}">Threshold: '
        f"{_e(summary.threshold_note)}. A photo gets a landmark when its confidence is at or above it.</div>"),
        name="lt_threshold", index=1)
    page = fig.render()
    # the map adds its div to the body as it renders: the gallery goes after it, at the end of the body
    gallery = f"<main>{_gallery(groups, colours, errors)}</main>" + POPUP_JS % json.dumps(fmap.get_name())
    head, body_end, tail = page.rpartition("</body>")
    if not body_end:
        raise RuntimeError("folium's page has no </body>: src/report.py needs updating for this folium version")
    page = _inline_assets(head + gallery + body_end + tail)
    atomic_write_text(out, page)
    summary.size_bytes = len(page.encode("utf-8"))
    return summary


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", metavar="TAGS_CSV", help="the CSV written by python -m src tag")
    parser.add_argument("--photos", default=None, metavar="DIR",
                        help="the folder the CSV's paths are relative to (default: the one tag recorded)")
    parser.add_argument("--out", default=None, help="HTML file to write (default: TAGS_CSV with .html)")
    parser.add_argument("--thumb-size", type=int, default=160, help="thumbnail size in pixels (default 160)")


def report_main(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.csv).with_suffix(".html")
    summary = build_report(args.csv, args.photos, out, thumb_size=args.thumb_size)
    print(f"{out}: {summary.photos} photos, {summary.tagged} tagged ({len(summary.landmarks)} landmarks), "
          f"{summary.no_landmark} no known landmark, {summary.errors} errors; {summary.on_map} on the map; "
          f"{summary.size_bytes / 1e6:.1f} MB (opens offline; map tiles from OpenStreetMap need the network)")
    print(f"Threshold: {summary.threshold_note}")
    if summary.missing_thumbnails:
        print(f"{summary.missing_thumbnails} photos have no preview (missing or unreadable now)", file=sys.stderr)
    return 0
