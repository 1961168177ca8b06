"""The landmark index: reference embeddings of each landmark's photos, their locations, and the calibrated
threshold, in one file beside an exported model (``model.pt`` -> ``model.index.npz``).

A photo takes the landmark whose reference photos are most similar to it (cosine similarity of L2-normalised
embeddings, searched with FAISS); how similar decides "no known landmark". Adding a landmark is adding its
reference embeddings: no training. Search is exact (``IndexFlatIP``) up to :data:`EXACT_LIMIT` references and
approximate (IVF-PQ) above, where memory and time would otherwise grow with every reference.

The file is a zip written atomically (a killed enrol leaves the previous index), and it records a fingerprint of
the model that made its embeddings: an index of another model is refused with one line, not silently searched.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .helpers import atomic_path

INDEX_FORMAT = "landmark-tagger-index/1"
INDEX_SUFFIX = ".index.npz"
EXACT_LIMIT = 50_000      # references searched exactly below this; an approximate IVF-PQ index above
RERANK = 256  # approximate search: candidates re-ranked exactly per query (at least 4x those asked for)
NEIGHBOURS = 64           # nearest references looked at per query (the per-class scores come from them)
PER_CLASS = 3             # a class's score: the mean similarity of its PER_CLASS nearest references to the photo
PROBE_AGREEMENT = 0.98    # least cosine similarity between the probe embeddings of the index's model and this one


class LandmarkIndexError(ValueError):
    """An index file that cannot be used (missing, damaged, another model's); one line naming the file."""


def index_path_for(model_path: str | os.PathLike) -> Path:
    """``checkpoints/transfer_exported.pt`` (or ``.onnx``) -> ``checkpoints/transfer_exported.index.npz``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + INDEX_SUFFIX)


def probe_images(resize_size: int, n: int = 2) -> "np.ndarray":
    """Fixed uint8 images ``[n, 3, R, R]`` whose embeddings fingerprint a model (same on every machine)."""
    rng = np.random.default_rng(20261130)
    smooth = np.linspace(0, 255, resize_size, dtype=np.float64)
    base = (smooth[None, :] + smooth[:, None]) / 2
    images = [np.stack([base, base.T, 255 - base]).astype(np.uint8)]
    images += [rng.integers(0, 256, (3, resize_size, resize_size), dtype=np.uint8) for _ in range(n - 1)]
    return np.stack(images)


def _faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its "no AVX2 build" notes are not for users
    import faiss  # noqa: PLC0415 - on first use: commands that never search do not load it

    return faiss


@dataclass
class LandmarkIndex:
    """Reference embeddings ``[N, D]`` (unit length), the class of each, and what each class is.

    ``classes``: ``[{"class", "name", "city", "country", "lat", "lon", "source"}]`` (``source``: "trained" for the
    model's own classes, "enrolled" for landmarks added later). ``refs``: where each reference came from.
    ``calibration``: how scores become a confidence and the default threshold (see :mod:`src.openset`).
    ``model``: the fingerprint of the model whose embeddings these are.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    classes: list[dict]
    refs: list[str]
    model: dict
    calibration: dict = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    _search_index: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.embeddings = np.ascontiguousarray(self.embeddings, dtype=np.float32).reshape(len(self.labels), -1) \
            if len(self.labels) else np.zeros((0, int(self.model.get("dim", 0))), dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.refs) != len(self.labels):
            raise ValueError(f"{len(self.refs)} reference names for {len(self.labels)} references")

    # ---- what it knows ---------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.model.get("dim", self.embeddings.shape[1] if self.embeddings.ndim == 2 else 0))

    def __len__(self) -> int:
        return len(self.labels)

    def class_keys(self) -> list[str]:
        return [c["class"] for c in self.classes]

    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes)) if len(self.classes) else np.zeros(0, int)

    def find_class(self, name: str) -> int | None:
        """The class whose key (``"09.Golden_Gate_Bridge"``) or readable name matches ``name`` (case-insensitive)."""
        wanted = " ".join(str(name).replace("_", " ").split()).lower()
        for i, c in enumerate(self.classes):
            key = " ".join(c["class"].replace("_", " ").split()).lower()
            if wanted in (key, " ".join(str(c.get("name", "")).split()).lower(), key.split(".", 1)[-1]):
                return i
        return None

    # ---- search ----------------------------------------------------------------------------------------------
    def _index(self):
        if self._search_index is None:
            faiss = _faiss()
            dim = self.embeddings.shape[1]
            if len(self) <= EXACT_LIMIT:
                index = faiss.IndexFlatIP(dim)
            else:  # inverted lists with product-quantised codes: ~64 bytes a reference instead of 4 per dimension
                # ~4 sqrt(N) lists (FAISS's guidance), at least 39 training points each; PQ codes of one byte per
                # 16 dimensions (1280 -> 80 bytes a reference)
                # (at most 1024 lists, trained on at most 64 Ki references: building stays minutes at 10^6)
                nlist = int(max(1, min(1024, 4 * math.sqrt(len(self)), len(self) // 39)))
                m = next(m for m in range(max(1, dim // 16), 0, -1) if dim % m == 0)
                index = faiss.index_factory(dim, f"IVF{nlist},PQ{m}", faiss.METRIC_INNER_PRODUCT)
                rng = np.random.default_rng(0)
                sample = self.embeddings[rng.choice(len(self), size=min(len(self), 64 * nlist, 65536), replace=False)]
                index.train(sample)
                # lists searched per query: at 10^5 random references recall@1 was 0.945 with 16, 0.992 with 32
                # and 64 at the same time per query (benchmarks/bench_index.py; the re-ranking dominates it)
                index.nprobe = 64
            if len(self):
                index.add(self.embeddings)
            self._search_index = index
        return self._search_index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar references of each query: ``(similarities [Q, k], reference ids [Q, k])``,
        most similar first; ids are -1 (similarity -inf) where there are fewer than ``k`` references."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if len(self) == 0 or k <= 0:
            return np.full((len(queries), max(k, 0)), -np.inf, np.float32), np.full((len(queries), max(k, 0)), -1)
        index = self._index()
        if len(self) <= EXACT_LIMIT:
            sims, ids = index.search(queries, int(k))
            return np.where(ids < 0, -np.inf, sims), ids
        # Approximate: the IVF-PQ candidates re-ranked by their exact similarity (the embeddings are in memory
        # anyway). PQ's estimates are too coarse to rank the nearest few (recall@1 0.77 at 10^6 random references),
        # and exact similarities keep the calibrated threshold meaning the same at any index size.
        out_sims = np.full((len(queries), int(k)), -np.inf, np.float32)
        out_ids = np.full((len(queries), int(k)), -1, np.int64)
        candidates = min(len(self), max(RERANK, 4 * int(k)))
        for start in range(0, len(queries), 64):  # bounded memory: 64 x candidates x dim floats at a time
            q = queries[start:start + 64]
            ids = index.search(q, candidates)[1]
            sims = np.einsum("qd,qkd->qk", q, self.embeddings[np.maximum(ids, 0)])
            sims = np.where(ids < 0, -np.inf, sims)
            order = np.argsort(-sims, axis=1, kind="stable")[:, :int(k)]
            out_sims[start:start + len(q), :order.shape[1]] = np.take_along_axis(sims, order, axis=1)
            out_ids[start:start + len(q), :order.shape[1]] = np.take_along_axis(ids, order, axis=1)
        return out_sims, out_ids

    def class_scores(self, queries: np.ndarray, exclude: Sequence[int] | None = None,
                     neighbours: int = NEIGHBOURS, per_class: int = PER_CLASS) -> np.ndarray:
        """Each query's score for each class ``[Q, C]``: the mean similarity of the class's ``per_class`` nearest
        references among the query's ``neighbours`` nearest (fewer when the class has fewer references). A class
        with too few (or no) references among them is filled with the farthest neighbour's similarity (an upper
        bound on what its farther references could add).

        ``exclude[i]``: a reference id to leave out for query ``i`` (the query's own photo, when calibrating on
        photos that are also references).
        """
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        n_classes = len(self.classes)
        scores = np.full((len(queries), n_classes), -1.0, dtype=np.float64)
        if len(self) == 0 or n_classes == 0:
            return scores
        k = min(len(self), neighbours + (1 if exclude is not None else 0))
        sims, ids = self.search(queries, k)
        counts = self.counts()
        for q in range(len(queries)):
            keep = ids[q] >= 0
            if exclude is not None and exclude[q] is not None and exclude[q] >= 0:
                keep &= ids[q] != exclude[q]
            q_ids, q_sims = ids[q][keep], sims[q][keep].astype(np.float64)
            if len(q_ids) == 0:
                continue
            floor = q_sims[-1]
            taken: dict[int, list[float]] = {}
            for rid, sim in zip(q_ids, q_sims):
                c = int(self.labels[rid])
                bucket = taken.setdefault(c, [])
                if len(bucket) < per_class:
                    bucket.append(float(sim))
            own = int(self.labels[exclude[q]]) if exclude is not None and exclude[q] is not None \
                and exclude[q] >= 0 else -1
            scores[q, counts > (np.arange(n_classes) == own)] = floor
            for c, vals in taken.items():
                need = max(1, min(per_class, int(counts[c]) - (c == own)))
                vals = vals[:need] + [floor] * max(0, need - len(vals))
                scores[q, c] = float(np.mean(vals))
        return scores

    # ---- changes ---------------------------------------------------------------------------------------------
    def add(self, info: dict, embeddings: np.ndarray, refs: Sequence[str]) -> int:
        """Add (or extend) the class described by ``info`` with ``embeddings`` ``[n, D]``; returns its number."""
        embeddings = np.asarray(embeddings, dtype=np.float32).reshape(-1, self.dim)
        if len(embeddings) != len(refs):
            raise ValueError(f"{len(refs)} reference names for {len(embeddings)} embeddings")
        if len(embeddings) == 0:
            raise ValueError(f"no usable photos for {info['class']}")
        found = self.find_class(info["class"])
        if found is None:
            self.classes.append(dict(info))
            found = len(self.classes) - 1
        self.embeddings = np.concatenate([self.embeddings, embeddings])
        self.labels = np.concatenate([self.labels, np.full(len(embeddings), found, dtype=np.int64)])
        self.refs = list(self.refs) + list(refs)
        self._search_index = None
        self.created = time.time()
        return found

    def remove(self, name: str) -> dict:
        """Remove a class and all its references; returns what it was. ``KeyError`` when there is none such."""
        found = self.find_class(name)
        if found is None:
            known = ", ".join(c["class"] for c in self.classes[:8]) + (" ..." if len(self.classes) > 8 else "")
            raise KeyError(f"no landmark {name!r} in the index (known: {known})")
        keep = self.labels != found
        removed = dict(self.classes[found], references=int((~keep).sum()))
        self.embeddings = self.embeddings[keep]
        self.labels = self.labels[keep]
        self.labels = self.labels - (self.labels > found)
        self.refs = [r for r, k in zip(self.refs, keep) if k]
        del self.classes[found]
        self._search_index = None
        self.created = time.time()
        return removed

    # ---- file ------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to ``path`` atomically (a temporary file renamed over it)."""
        path = Path(path)
        meta = {"format": INDEX_FORMAT, "classes": self.classes, "refs": self.refs, "model": self.model,
                "calibration": self.calibration, "created": self.created}
        buffer = io.BytesIO()
        np.savez(buffer, embeddings=self.embeddings, labels=self.labels,
                 meta=np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), dtype=np.uint8))
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LandmarkIndex":
        """Read an index file; :class:`LandmarkIndexError` (one line naming it) when it is missing or damaged."""
        path = Path(path)
        if not path.is_file():
            raise LandmarkIndexError(f"{path}: no such index file")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode("utf-8"))
                embeddings, labels = data["embeddings"], data["labels"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as exc:
            raise LandmarkIndexError(f"{path}: not a readable landmark index ({type(exc).__name__}: "
                                     f"{' '.join(str(exc).split())[:200]})") from None
        if meta.get("format") != INDEX_FORMAT:
            raise LandmarkIndexError(f"{path}: not a landmark index of this tool (format {meta.get('format')!r})")
        try:
            index = cls(embeddings, labels, list(meta["classes"]), list(meta["refs"]), dict(meta["model"]),
                        dict(meta.get("calibration") or {}), float(meta.get("created", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise LandmarkIndexError(f"{path}: damaged landmark index ({exc})") from None
        if len(index) and (index.labels.min() < 0 or index.labels.max() >= len(index.classes)):
            raise LandmarkIndexError(f"{path}: damaged landmark index (a reference of a class it does not list)")
        weights = (index.calibration.get("confidence") or {}).get("weights")
        # score and margin (src.openset.score_features), and for retrieval the classifier's probability too
        wanted = 3 if index.calibration.get("method") == "retrieval" else 2
        if weights is not None and (len(weights) != wanted or (
                wanted == 3 and "weights" not in (index.calibration.get("confidence_enrolled") or {}))):
            raise LandmarkIndexError(f"{path}: calibrated by an older version of this tool; rebuild it with python -m "
                                     f"src calibrate")
        if len(index) and index.embeddings.shape[1] != index.dim:
            raise LandmarkIndexError(f"{path}: damaged landmark index (embeddings of {index.embeddings.shape[1]} "
                                     f"values, model gives {index.dim})")
        return index

    def check_model(self, fingerprint: dict, path: str | os.PathLike = "") -> None:
        """Refuse (one line) an index made by another model than the one whose ``fingerprint`` is given."""
        mine = self.model
        where = f"{path}: " if path else ""
        if int(mine.get("dim", -1)) != int(fingerprint.get("dim", -2)):
            raise LandmarkIndexError(f"{where}made for a model with {mine.get('dim')}-value embeddings, this one "
                                     f"gives {fingerprint.get('dim')} (another model's index; rebuild it with "
                                     f"python -m src calibrate)")
        if list(mine.get("class_names", [])) != list(fingerprint.get("class_names", [])):
            raise LandmarkIndexError(f"{where}made for a model of other classes (another model's index; rebuild "
                                     f"it with python -m src calibrate)")
        a, b = np.asarray(mine.get("probe", []), np.float64), np.asarray(fingerprint.get("probe", []), np.float64)
        if a.shape != b.shape:
            raise LandmarkIndexError(f"{where}its model fingerprint does not match this model's")
        if a.size:
            agreement = float(np.min(np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
                                                                + 1e-12)))
            if not agreement >= PROBE_AGREEMENT:
                raise LandmarkIndexError(f"{where}made by another model (its embeddings of the probe images agree "
                                         f"with this model's only to {agreement:.3f}); rebuild it with python -m "
                                         f"src calibrate")
