"""What writing metadata costs: ``tag --sidecar`` (and ``--write-into-photo``) against ``tag`` alone on the same
photos in the same run, and ExifTool's sidecar rate on its own (new sidecars, reruns, darktable sidecars merged).

    python benchmarks/bench_sidecar.py                      # 1,000 photos, checkpoints/transfer_exported.pt
    python benchmarks/bench_sidecar.py --n 200 --model my_exported.pt

Photos: the first ``--n`` (default 1,000) of ``../shared/data/landmarks13`` (test, then train; real web photos,
JPEG/PNG/WEBP/GIF) copied into a temporary folder, else generated JPEGs. ``--min-prob 0`` (default) makes every
photo "ok", so every photo gets a sidecar. Each ``tag`` variant starts from a clean folder (no CSV, no sidecars)
with the model already loaded; variants alternate over ``--repeat`` rounds and the median is reported.

Rows:
* **tag**: ``tag_folder`` without metadata (the baseline);
* **tag --sidecar**: the same plus one new ``photo.xmp`` per photo;
* **tag --sidecar --write-into-photo**: plus the fields written into each JPEG/PNG/WEBP (pixels checked);
* **sidecars only (new / rerun / darktable merge)**: ``update_metadata`` over the tag rows with no model: a new
  sidecar per photo; the same again (all "unchanged": a read, no write); each photo holding a darktable sidecar
  that gets our fields merged in.

The machine's load average is recorded before and after (the figures mean little on a busy machine).
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import format_table, save_results

from src.metadata import check_exiftool, sidecar_path, update_metadata
from src.tagging import list_photos, tag_folder

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "landmarks13"
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "checkpoints" / "transfer_exported.pt"
DARKTABLE = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:darktable="http://darktable.sf.net/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
 xmp:Rating="3" darktable:xmp_version="5"><darktable:history><rdf:Seq>
<rdf:li darktable:operation="exposure" darktable:enabled="1" darktable:params="0000c03f"/>
<rdf:li darktable:operation="crop" darktable:enabled="1" darktable:params="cdcc4c3e"/>
</rdf:Seq></darktable:history></rdf:Description></rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>
"""


def load() -> float:
    return round(os.getloadavg()[0], 2)


def copy_photos(dest: Path, n: int) -> list[Path]:
    dest.mkdir(parents=True)
    if (SHARED / "test").is_dir():
        sources = (list_photos(SHARED / "test") + list_photos(SHARED / "train"))[:n]
        for i, src in enumerate(sources):
            shutil.copy2(src, dest / f"{i:04d}_{src.name}")
    else:
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(dest / f"{i:04d}.jpg")
    return list_photos(dest)


def clean(folder: Path) -> None:
    for path in folder.glob("*.xmp"):
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="exported model (default: %(default)s)")
    parser.add_argument("--n", type=int, default=1000, help="photos (default 1000)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of the tag variants (default 2)")
    parser.add_argument("--min-prob", type=float, default=0.0, help="threshold (default 0: every photo 'ok')")
    parser.add_argument("--name", default="bench_sidecar", help="results/NAME.json (default bench_sidecar)")
    args = parser.parse_args(argv)
    check_exiftool()
    from src.recognizer import Recognizer  # noqa: PLC0415 - after the argument check: torch is slow to import

    load_before = load()
    recognizer = Recognizer.load(args.model)
    with tempfile.TemporaryDirectory(prefix="bench_sidecar.") as tmp:
        tmp = Path(tmp)
        photos = copy_photos(tmp / "photos", args.n)
        folder = tmp / "photos"
        tag_folder(folder, recognizer, tmp / "warm.csv", min_prob=args.min_prob, progress=False)  # warm caches
        variants = {"tag": {}, "tag --sidecar": {"sidecar": True},
                    "tag --sidecar --write-into-photo": {"sidecar": True, "into_photo": True}}
        times = {name: [] for name in variants}
        counts = {}
        for r in range(args.repeat):
            for name, flags in variants.items():
                if flags.get("into_photo"):  # a fresh copy: the photos of an earlier round hold our fields
                    shutil.rmtree(folder)
                    photos = copy_photos(folder, args.n)
                clean(folder)
                out = tmp / f"tags_{r}_{len(flags)}.csv"
                started = time.perf_counter()
                summary = tag_folder(folder, recognizer, out, min_prob=args.min_prob, progress=False, **flags)
                times[name].append(time.perf_counter() - started)
                counts[name] = dict(summary.metadata)
                print(f"round {r + 1}: {name}: {times[name][-1]:.1f} s {summary.metadata}", flush=True)
        with open(tmp / "tags_0_0.csv", newline="", encoding="utf-8") as fh:
            rows = {row["path"]: row for row in csv.DictReader(fh)}
        provenance = recognizer.provenance(args.min_prob)

        def sidecars_only(label: str) -> tuple[float, dict]:
            words: dict = {}
            started = time.perf_counter()
            for photo in photos:
                word = update_metadata(photo, rows[photo.name], provenance, sidecar=True)
                words[word] = words.get(word, 0) + 1
            seconds = time.perf_counter() - started
            print(f"{label}: {seconds:.1f} s {words}", flush=True)
            return seconds, words

        clean(folder)
        only_new = sidecars_only("sidecars only, new")
        only_rerun = sidecars_only("sidecars only, rerun")
        clean(folder)
        for photo in photos:
            sidecar_path(photo).write_text(DARKTABLE, encoding="utf-8")
        only_merge = sidecars_only("sidecars only, darktable merge")

    n = len(photos)
    base = statistics.median(times["tag"])
    table_rows = []
    for name in variants:
        seconds = statistics.median(times[name])
        written = sum(counts[name].values())
        extra = seconds - base
        table_rows.append({"method": name, "photos": n, "seconds": f"{seconds:.1f}",
                           "photos_per_s": f"{n / seconds:.1f}", "vs_tag": f"{seconds / base:.2f}x",
                           "metadata": str(counts[name] or "-"),
                           "metadata_per_s": f"{written / extra:.0f}" if written and extra > 0 else "-"})
    for label, (seconds, words) in (("sidecars only: new", only_new), ("sidecars only: rerun (unchanged)", only_rerun),
                                    ("sidecars only: darktable merge", only_merge)):
        table_rows.append({"method": label, "photos": n, "seconds": f"{seconds:.1f}",
                           "photos_per_s": f"{n / seconds:.1f}", "vs_tag": "-", "metadata": str(words),
                           "metadata_per_s": f"{sum(words.values()) / seconds:.0f}"})
    table = format_table(table_rows, [("method", "method"), ("photos", "photos"), ("seconds", "s (median)"),
                                      ("photos_per_s", "photos/s"), ("vs_tag", "time vs tag"),
                                      ("metadata_per_s", "metadata files/s (extra time)"), ("metadata", "outcome")])
    save_results(args.name, "bench_sidecar.py", argv, table_rows, table, model=str(args.model),
                 method=recognizer.method, repeat=args.repeat, load_before=load_before, load_after=load(),
                 exiftool=os.popen("exiftool -ver").read().strip(), times=times)
    return 0


if __name__ == "__main__":
    sys.exit(main())
