"""Decoders of a sample's members for the training loader: ``.npy`` arrays viewed in place, the MP4's frame
size read from its header, a window's frames alone at the letterboxed size, reference JPEGs, and routing
masks recomputed from ``masks.rle.json``."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mtcc.media.geometry import LatentGeometry, letterbox_mask, route_index_mask


def npy_view(data: bytes) -> np.ndarray:
    """The array of ``np.save`` bytes as a read-only view into them (nothing decoded or copied)."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject:
        raise ValueError("object arrays are not loaded")
    count = int(np.prod(shape)) if shape else 1
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=f.tell())
    return arr.reshape(shape, order="F" if fortran else "C")


def mp4_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the first video track, from its ``tkhd`` box (no decoding); None if not found."""
    def boxes(lo: int, hi: int) -> Iterator[tuple[bytes, int, int]]:
        while lo + 8 <= hi:
            size, kind = struct.unpack(">I4s", data[lo:lo + 8])
            head = 8
            if size == 1:
                size, head = struct.unpack(">Q", data[lo + 8:lo + 16])[0], 16
            elif size == 0:
                size = hi - lo
            if size < head or lo + size > hi:
                return
            yield kind, lo + head, lo + size
            lo += size

    for kind, a, b in boxes(0, len(data)):
        if kind != b"moov":
            continue
        for k2, a2, b2 in boxes(a, b):
            if k2 != b"trak":
                continue
            for k3, a3, b3 in boxes(a2, b2):
                if k3 != b"tkhd":
                    continue
                body = data[a3:b3]
                off = 88 if body[:1] == b"\x01" else 76  # width, height follow the matrix; v1 has 64-bit times
                if len(body) < off + 8:
                    continue
                w, h = struct.unpack(">II", body[off:off + 8])
                if w >> 16 and h >> 16:
                    return w >> 16, h >> 16
    return None


def letterbox_square(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` resized to fit ``size`` x ``size`` with its aspect kept, centred on black."""
    import cv2

    h, w = img.shape[:2]
    s = size / max(h, w)
    nw, nh = max(1, min(size, round(w * s))), max(1, min(size, round(h * s)))
    out = np.zeros((size, size, 3), np.uint8)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


def decode_jpeg(data: bytes) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("undecodable JPEG")
    return img[:, :, ::-1]


def window_frames(start: int, end: int, frames: int) -> list[int]:
    """Clip frame of each of the ``frames`` positions of a window; past its end the last frame repeats."""
    return [min(start + i, end - 1) for i in range(frames)]


def decode_video(data: bytes, idx: Sequence[int], geo: LatentGeometry, threads: int = 1) -> np.ndarray:
    """uint8 ``[3, F, geo.height, geo.width]``: clip frames ``idx`` decoded once at the letterboxed size
    (decord resizes inside the decoder) and placed on the black canvas."""
    import decord

    size = mp4_size(data)
    if size is None:  # no usable tkhd: learn the size from one decoded frame
        size = tuple(decord.VideoReader(io.BytesIO(data), num_threads=threads)[0].shape[1::-1])
    w, h, x0, y0 = geo.letterbox(*size)
    vr = decord.VideoReader(io.BytesIO(data), width=w, height=h, num_threads=threads)
    n = len(vr)
    idx = [min(i, n - 1) for i in idx]
    uniq = sorted(set(idx))
    frames = vr.get_batch(uniq).asnumpy()
    if len(uniq) == len(idx) and uniq == list(idx):
        sel = frames
    else:
        pos = {f: i for i, f in enumerate(uniq)}
        sel = frames[[pos[f] for f in idx]]
    out = np.zeros((3, len(idx), geo.height, geo.width), np.uint8)
    out[:, :, y0:y0 + h, x0:x0 + w] = sel.transpose(3, 0, 1, 2)
    return out


def route_from_rle(doc: dict[str, Any], idx: Sequence[int], geo: LatentGeometry) -> np.ndarray:
    """int8 flattened routing mask of clip frames ``idx`` from ``masks.rle.json``, by the masks stage's
    recipe: each character's mask letterboxed onto the canvas, trilinear to the grid, > threshold."""
    from mtcc.media import rle as rle_codec

    chars = sorted(doc["characters"], key=lambda c: int(c["index"]))
    canvas = np.zeros((len(chars), len(idx), geo.height, geo.width), np.uint8)
    for k, c in enumerate(chars):
        seq = c["rle"]
        done: dict[int, np.ndarray] = {}
        for j, f in enumerate(idx):
            f = min(f, len(seq) - 1)
            if f not in done:
                done[f] = letterbox_mask(rle_codec.decode(seq[f]), geo)
            canvas[k, j] = done[f]
    return route_index_mask(canvas, geo).reshape(-1)
