"""Image packs: the bytes of many small image objects stored together as one S3 object.

Reading an image from S3 costs a GET, and on a small machine each GET's CPU (the client's signing and parsing,
and the server's, when the server runs on the same cores) is taken from the backbone: per-object reads held
extraction from ``s3://`` at ~0.82 of the model's own speed where local files reach 0.96 (README, Speed).
While the manifest is built every new image is read anyway (to hash and check it), so :class:`PackWriter` also
stores those bytes, ``PACK_IMAGES`` at a time, in one uncompressed zip under the artifact bucket's ``packs/``,
and the manifest's ``pack`` column says where each image's bytes are. Readers in manifest order
(:func:`scene.model.pipeline.pixel_batches`) then pay one GET per pack instead of one per image.

A pack is a cache, never the data of record: its name is a hash of the images it holds (two runs writing the same
images write the same object), every image read from it is checked against the manifest's SHA-256, and a pack that
is missing, unreadable or does not match falls back to the image's own object with a warning.

The image's own object (or local file) is checked too: :func:`reader` verifies *every* read of a key whose
manifest row records a SHA-256 — pack member, fallback read, local folder, shuffled (unpacked) order alike — and a
mismatch raises :class:`ContentMismatch` naming the key and both hashes. The image then fails loudly: no feature is
computed from those bytes, so none is cached under the manifest's hash, and no score is given to it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

from scene.data import storage

log = logging.getLogger(__name__)

PACK_IMAGES = 256  # images per pack: one GET instead of 256
PACK_BYTES = 16 << 20  # a pack is closed early when it reaches this size
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same images give the same bytes


class ContentMismatch(storage.StorageError):
    """An image's bytes do not hash to the SHA-256 its manifest row records: it changed after the manifest was built."""


def verify(key: str, data: bytes, sha: str) -> bytes:
    """``data`` when it hashes to ``sha``; else raise :class:`ContentMismatch` naming ``key`` and both hashes."""
    actual = storage.sha256_bytes(data)
    if actual != sha:
        raise ContentMismatch(
            f"{key}: its {len(data)} bytes have sha256 {actual}, but the manifest records {sha}: the image changed "
            "after the manifest was built, so it is neither scored nor cached; re-run the flow (its manifest step "
            "reads the image again) or restore the original bytes")
    return data


def writer_for(data: str, artifact_bucket: str, s3: object) -> PackWriter | None:
    """The writer of packs of images read from ``data``: to ``s3://<artifact bucket>/packs`` for S3 data; None for
    local folders (reading a local file costs no GET, so packing it would only copy it)."""
    return PackWriter(f"s3://{artifact_bucket}/packs", s3) if storage.parse(data).is_s3 else None


def pack_uri(root: str, shas: list[str]) -> str:
    """The content address of a pack holding ``shas`` (in this order)."""
    return f"{root.rstrip('/')}/{hashlib.sha256(' '.join(shas).encode()).hexdigest()[:32]}.zip"


def encode(members: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed zip of ``(sha256, bytes)``, each member named by its SHA-256 (``unzip -l`` lists them)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for sha, data in members:
            z.writestr(zipfile.ZipInfo(sha, _EPOCH), data)
    return out.getvalue()


def decode(blob: bytes) -> dict[str, bytes]:
    """``{sha256: bytes}`` of a pack (raises ``zipfile.BadZipFile`` / ``KeyError`` on a damaged one)."""
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        return {name: z.read(name) for name in z.namelist()}


@dataclass
class PackWriter:
    """Collects ``(sha256, bytes)`` of images as they are read and writes a pack every ``PACK_IMAGES``.

    Thread-safe. :meth:`close` writes the last pack and returns ``{sha256: pack URI}``. A pack that cannot be
    written is skipped with a warning (its images keep being read from their own objects): packs are a cache.
    """

    root: str
    s3: object = None
    images: int = PACK_IMAGES
    max_bytes: int = PACK_BYTES
    written: dict[str, str] = field(default_factory=dict)
    _members: list[tuple[str, bytes]] = field(default_factory=list)
    _size: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sha: str, data: bytes) -> None:
        with self._lock:
            if sha in self.written or any(s == sha for s, _ in self._members):
                return
            self._members.append((sha, data))
            self._size += len(data)
            if len(self._members) < self.images and self._size < self.max_bytes:
                return
            members, self._members, self._size = self._members, [], 0
        self._write(members)

    def close(self) -> dict[str, str]:
        with self._lock:
            members, self._members, self._size = self._members, [], 0
        if members:
            self._write(members)
        return dict(self.written)

    def _write(self, members: list[tuple[str, bytes]]) -> None:
        uri = pack_uri(self.root, [s for s, _ in members])
        try:
            storage.write_bytes(uri, encode(members), self.s3)
        except storage.StorageError as err:
            log.warning("image pack %s not written (%s); its %d images will be read one object each", uri, err,
                        len(members))
            return
        with self._lock:
            self.written.update((sha, uri) for sha, _ in members)


class PackReader:
    """Image bytes by ``(pack URI, sha256)``: one GET per pack, shared by the threads that ask for it at once,
    the last ``keep`` packs held in memory. ``get`` returns None when the pack is missing, damaged or does not hold
    the image with that hash (the caller reads the image's own object); each bad pack is warned about once per
    reader."""

    def __init__(self, fetch: Callable[[str], bytes], keep: int = 4) -> None:
        self._fetch = fetch
        self._keep = keep
        self._packs: OrderedDict[str, Future] = OrderedDict()
        self._lock = threading.Lock()
        self.fetched = 0  # packs read
        self.bad: dict[str, str] = {}  # pack URI → why it was not used

    def get(self, uri: str, sha: str) -> bytes | None:
        with self._lock:
            future = self._packs.get(uri)
            owner = future is None
            if owner:
                future = self._packs[uri] = Future()
                while len(self._packs) > self._keep:
                    self._packs.popitem(last=False)
            else:
                self._packs.move_to_end(uri)
        if owner:
            future.set_result(self._load(uri))
        members = future.result()
        data = members.get(sha) if members is not None else None
        if data is not None and storage.sha256_bytes(data) == sha:
            return data
        if members is not None:
            self._warn(uri, f"its member {sha} is missing or does not match its SHA-256")
        return None

    def _load(self, uri: str) -> dict[str, bytes] | None:
        try:
            members = decode(self._fetch(uri))
        except Exception as err:  # a cache: whatever went wrong, the images' own objects remain
            self._warn(uri, str(err) or type(err).__name__)
            return None
        with self._lock:
            self.fetched += 1
        return members

    def _warn(self, uri: str, why: str) -> None:
        with self._lock:
            if uri in self.bad:
                return
            self.bad[uri] = why
        log.warning("image pack %s not used (%s); reading its images one object each", uri, why)


def locations(rows: object, *, use_packs: bool = True) -> dict[str, tuple[str, str]]:
    """``{key: (pack URI or "", sha256)}`` of the manifest rows that record a SHA-256 (a DataFrame with ``sha256``;
    the pack from its ``pack`` column). ``use_packs=False``: every pack ``""`` (the hashes are still checked)."""
    import pandas as pd

    if not isinstance(rows, pd.DataFrame) or "sha256" not in rows.columns or rows.empty:
        return {}
    known = rows[rows["sha256"].fillna("").astype(str).str.strip() != ""]  # a CSV's empty cell reads as NaN
    where = (known["pack"].fillna("").astype(str).str.strip() if use_packs and "pack" in known.columns
             else pd.Series("", index=known.index))
    return dict(zip(known["key"], zip(where, known["sha256"].astype(str), strict=True), strict=True))


def reader(fetch: Callable[[str], bytes], where: Mapping[str, tuple[str, str]]) -> Callable[[str], bytes]:
    """``fetch`` (key → bytes) that reads keys listed in ``where`` from their pack first (when they have one) and
    checks every read of a listed key against its SHA-256 (:func:`verify`); unlisted keys are read as they are."""
    if not where:
        return fetch
    packs = PackReader(fetch)

    def read(key: str) -> bytes:
        found = where.get(key)
        if found is None:
            return fetch(key)
        pack, sha = found
        data = packs.get(pack, sha) if pack else None  # a pack member is already checked against sha
        return data if data is not None else verify(key, fetch(key), sha)

    read.packs = packs  # type: ignore[attr-defined]  # its counters, for logs and tests
    return read
