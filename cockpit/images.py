"""Image samples in the terminal and on disk: numpy and rich, Pillow only when writing a PNG; no torch
(cockpit starts fast).

    decode_image(payload)           a `sample` event (or its `image` field) -> (H, W, C) uint8
    halfblock(img, max_width=None)  -> rich.text.Text: one "▀" per two pixel rows, foreground = the top
                                       pixel, background = the bottom pixel, in true colour
    fit_grid(img, grid, w, h)       a sample grid re-tiled to fit w x h pixels (class columns reflow)
    write_png(path, img)            a PNG file (Pillow), for `cockpit --replay FILE --images`
    upscale(img)                    nearest-neighbour enlargement for those PNGs
"""
from __future__ import annotations

import base64
import contextlib
import errno
import io
import os
from pathlib import Path

import numpy as np
from rich.style import Style
from rich.text import Text

UPPER_HALF = "\u2580"  # ▀


def decode_image(payload: dict) -> np.ndarray:
    """{"image": {"h", "w", "c", "data": base64 of HWC uint8}} or the inner dict -> (H, W, C) uint8."""
    img = payload.get("image", payload)
    try:
        h, w, c = int(img["h"]), int(img["w"]), int(img["c"])
        raw = base64.b64decode(img["data"], validate=True)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not an image payload ({e.__class__.__name__}: {e})") from None
    if c not in (1, 3, 4) or len(raw) != h * w * c:
        raise ValueError(f"image payload holds {len(raw)} bytes, expected h*w*c = {h}*{w}*{c}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(h, w, c)


def to_rgb(img: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1|3|4) uint8 -> (H, W, 3) uint8 (grey replicated, alpha dropped)."""
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        return np.repeat(img, 3, axis=-1)
    return img[..., :3]


def box_average(img: np.ndarray, f: int) -> np.ndarray:
    """Each f x f block of pixels averaged into one (edge pixels that do not fill a block are dropped)."""
    if f <= 1:
        return img
    h, w = img.shape[0] // f * f, img.shape[1] // f * f
    blocks = img[:h, :w].reshape(h // f, f, w // f, f, -1).astype(np.float32)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def shrink(img: np.ndarray, max_width: int | None) -> np.ndarray:
    """Downscale by the smallest integer factor that fits max_width columns (box average), keeping the aspect."""
    if not max_width or img.shape[1] <= max_width:
        return img
    f = -(-img.shape[1] // max(1, max_width))  # ceil
    if img.shape[0] < f:  # too short to average f rows: keep every f-th pixel
        return img[::f, ::f]
    return box_average(img, f)


def fit_grid(img: np.ndarray, grid: dict | None, max_w: int, max_h: int) -> np.ndarray:
    """Re-tile a sample grid to fit max_w x max_h pixels (a half-block cell is 1 x 2 pixels).

    A diffusion sample is `rows` samples per class column, `cols` columns side by side; a terminal pane is
    narrower than that. Each class column is kept whole and the columns reflow onto several lines; cells are
    box-averaged by the smallest integer factor that makes the whole fit. Without grid metadata (or when it
    does not match the image) the image is only shrunk to max_w."""
    if img.ndim == 2:
        img = img[..., None]
    H0, W0 = img.shape[:2]
    try:
        rows, cols = int(grid["rows"]), int(grid["cols"])
        ch, cw, pad = int(grid["cell_h"]), int(grid["cell_w"]), int(grid.get("pad", 0))
        ok = rows * (ch + pad) - pad == H0 and cols * (cw + pad) - pad == W0 and rows > 0 and cols > 0
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        f = max(1, -(-W0 // max(1, max_w)))
        return box_average(img, f)
    pad_value = img[0, cw] if cols > 1 and pad else (img[ch, 0] if rows > 1 and pad else img[0, 0] * 0)
    columns = [img[:, j * (cw + pad):j * (cw + pad) + cw] for j in range(cols)]
    best = None
    for f in range(1, max(ch, cw) + 1):
        h1, w1 = ch // f, cw // f
        if h1 < 1 or w1 < 1:
            break
        per_line = max(1, (max_w + pad) // (w1 + pad))
        lines = -(-cols // per_line)
        col_h = rows * (h1 + pad) - pad
        total_h = lines * (col_h + pad) - pad
        total_w = min(cols, per_line) * (w1 + pad) - pad
        best = (f, per_line, lines, col_h, total_h, total_w)
        if total_w <= max_w and total_h <= max_h:
            break
    f, per_line, lines, col_h, total_h, total_w = best
    out = np.empty((total_h, total_w, img.shape[2]), dtype=np.uint8)
    out[...] = pad_value
    h1, w1 = ch // f, cw // f
    for j, column in enumerate(columns):
        line, pos = divmod(j, per_line)
        y0, x0 = line * (col_h + pad), pos * (w1 + pad)
        for i in range(rows):
            cell = box_average(column[i * (ch + pad):i * (ch + pad) + ch], f)
            out[y0 + i * (h1 + pad):y0 + i * (h1 + pad) + h1, x0:x0 + w1] = cell[:h1, :w1]
    return out


def halfblock(img: np.ndarray, max_width: int | None = None) -> Text:
    """Render an image as ceil(H/2) lines of W "▀" cells: fg = pixel (2r, x), bg = pixel (2r+1, x).

    An odd last row leaves the bottom half unstyled (the terminal's background).
    """
    rgb = to_rgb(shrink(img, max_width))
    h, w, _ = rgb.shape
    text = Text(no_wrap=True, overflow="crop")
    styles: dict[tuple, Style] = {}
    for r in range(0, h, 2):
        top = rgb[r]
        bottom = rgb[r + 1] if r + 1 < h else None
        for x in range(w):
            key = (*top[x].tolist(), *(bottom[x].tolist() if bottom is not None else ()))
            style = styles.get(key)
            if style is None:
                fg = "rgb({},{},{})".format(*key[:3])
                style = Style.parse(f"{fg} on rgb({key[3]},{key[4]},{key[5]})" if len(key) == 6 else fg)
                styles[key] = style
            text.append(UPPER_HALF, style)
        if r + 2 < h:
            text.append("\n")
    return text


def png_bytes(img: np.ndarray) -> bytes:
    """Encode (H, W) or (H, W, 1|3|4) uint8 as an 8-bit grey/RGB/RGBA PNG."""
    from PIL import Image  # here, not at the top: only `--images` writes PNGs, and the UI starts faster without

    img = np.ascontiguousarray(img if img.ndim == 3 else img[..., None], dtype=np.uint8)
    if img.shape[-1] not in (1, 3, 4):
        raise ValueError(f"cannot write a PNG with {img.shape[-1]} channels; give 1, 3 or 4")
    out = io.BytesIO()  # Pillow picks the mode from the shape: L, RGB or RGBA
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(out, format="PNG")
    return out.getvalue()


def upscale(img: np.ndarray, min_side: int = 256, max_factor: int = 16) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole factor until the shorter side has min_side pixels: a 33-pixel
    tall sample grid becomes one a person can see, each pixel a crisp square (no blur, no new colours)."""
    short = min(img.shape[0], img.shape[1])
    factor = max(1, min(max_factor, -(-min_side // max(short, 1))))
    return img if factor == 1 else img.repeat(factor, axis=0).repeat(factor, axis=1)


def write_png(path: str | Path, img: np.ndarray) -> Path:
    """Write the PNG whole or not at all: into a temporary file beside `path`, then renamed over it. An
    existing `path` that is not a regular file (a directory, a device) is refused, never replaced."""
    path = Path(path)
    data = png_bytes(img)
    if path.exists() and not path.is_file():
        raise OSError(errno.EISDIR if path.is_dir() else errno.EEXIST, "exists and is not a regular file", str(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path
