"""Image samples in the terminal and on disk: numpy and rich, Pillow only when writing a PNG; no torch
(cockpit starts fast).

    decode_image(payload)           a `sample` event (or its `image` field) -> (H, W, C) uint8
    halfblock(img, max_width=None)  -> rich.text.Text: one "▀" per two pixel rows, foreground = the top
                                       pixel, background = the bottom pixel, in true colour
    fit_grid(img, grid, w, h)       a sample grid scaled down to fit w x h pixels, rows x columns kept
    labelled_grid(img, grid, classes) the grid enlarged, each column's class written above it (Pillow)
    write_png(path, img)            a PNG file (Pillow), for `cockpit --replay FILE --images` and `w`
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
# narrower cells than this lose the pixel between them: a 2-pixel cell beside a 1-pixel gap is a third gap
MIN_PADDED_CELL = 3


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


def resize_area(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W, C) uint8 -> (h, w, C): each output pixel the mean of the block of source pixels it covers (blocks
    differ by at most one pixel when the sizes do not divide); growing repeats pixels instead."""
    H, W = img.shape[:2]
    ys, xs = np.arange(h) * H // h, np.arange(w) * W // w     # first source row / column of each block
    sums = np.add.reduceat(np.add.reduceat(img.astype(np.float32), ys, axis=0), xs, axis=1)
    # reduceat gives the lone pixel where a block is empty (growing): count it once
    ny, nx = np.maximum(np.diff(ys, append=H), 1), np.maximum(np.diff(xs, append=W), 1)
    return (sums / (ny[:, None] * nx[None, :])[..., None]).round().astype(np.uint8)


def grid_tiling(grid: dict | None, shape: tuple) -> tuple[int, int, int, int, int] | None:
    """(rows, cols, cell_h, cell_w, pad) of a sample's grid metadata, or None when there is none or it does not
    match the image's (H, W)."""
    try:
        rows, cols = int(grid["rows"]), int(grid["cols"])
        ch, cw, pad = int(grid["cell_h"]), int(grid["cell_w"]), int(grid.get("pad", 0))
    except (TypeError, KeyError, ValueError):
        return None
    fits = rows * (ch + pad) - pad == shape[0] and cols * (cw + pad) - pad == shape[1]
    return (rows, cols, ch, cw, pad) if fits and rows > 0 and cols > 0 else None


def fit_grid(img: np.ndarray, grid: dict | None, max_w: int, max_h: int) -> tuple[np.ndarray, dict | None]:
    """A sample grid scaled down to fit max_w x max_h pixels (a half-block cell is 1 x 2 pixels), and its tiling
    after scaling ({"rows", "cols", "cell_h", "cell_w", "pad"}, as in the event).

    A diffusion sample is `rows` samples per class, one class per column: the grid keeps its rows x columns,
    so each column stays under its class's label; its cells shrink (never grow) by one factor, keeping their
    aspect. The padding between cells is one pixel, none when the cells would be under MIN_PADDED_CELL pixels
    wide with it. Without grid metadata (or when it does not match the image) the whole image is scaled to
    fit, and the tiling is None."""
    if img.ndim == 2:
        img = img[..., None]
    H0, W0 = img.shape[:2]
    tiling = grid_tiling(grid, (H0, W0))
    if tiling is None:
        s = min(1.0, max_w / W0, max_h / H0)
        return (img if s == 1.0 else resize_area(img, max(1, int(H0 * s)), max(1, int(W0 * s)))), None
    rows, cols, ch, cw, pad = tiling
    if W0 <= max_w and H0 <= max_h:
        return img, {"rows": rows, "cols": cols, "cell_h": ch, "cell_w": cw, "pad": pad}

    def cells(p: int) -> tuple[int, int, int]:
        """(gap, cell height, cell width) of the largest grid with gaps of p pixels that fits."""
        s = min(1.0, (max_w - (cols - 1) * p) / (cols * cw), (max_h - (rows - 1) * p) / (rows * ch))
        return p, max(1, int(ch * s)), max(1, int(cw * s))

    p, h1, w1 = cells(min(pad, 1))
    if p and w1 < MIN_PADDED_CELL:
        p, h1, w1 = cells(0)
    pad_value = img[0, cw] if cols > 1 and pad else (img[ch, 0] if rows > 1 and pad else img[0, 0] * 0)
    out = np.empty((rows * (h1 + p) - p, cols * (w1 + p) - p, img.shape[2]), dtype=np.uint8)
    out[...] = pad_value
    for i in range(rows):
        for j in range(cols):
            cell = img[i * (ch + pad):i * (ch + pad) + ch, j * (cw + pad):j * (cw + pad) + cw]
            out[i * (h1 + p):i * (h1 + p) + h1, j * (w1 + p):j * (w1 + p) + w1] = resize_area(cell, h1, w1)
    return out, {"rows": rows, "cols": cols, "cell_h": h1, "cell_w": w1, "pad": p}


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


# the class labels over a saved grid's columns: legible at a glance, small beside the enlarged cells
LABEL_FONT_PX = 14


def labelled_grid(img: np.ndarray, grid: dict | None, classes: list | None) -> np.ndarray:
    """A sample as `w` saves it: enlarged (upscale) and, with classes, on a white band above it each grid
    column's class over that column (cut with an ellipsis to the column's width); without grid metadata
    that matches, the classes in one line. (H', W', 3) uint8."""
    from PIL import Image, ImageDraw, ImageFont  # here, not at the top: only saving a sample draws text

    big = to_rgb(upscale(img if img.ndim == 3 else img[..., None]))
    if not classes:
        return big
    factor = big.shape[0] // img.shape[0]
    font = ImageFont.load_default(size=LABEL_FONT_PX)
    band = LABEL_FONT_PX + LABEL_FONT_PX // 2
    canvas = Image.new("RGB", (big.shape[1], band + big.shape[0]), "white")
    canvas.paste(Image.fromarray(big), (0, band))
    draw = ImageDraw.Draw(canvas)

    def fitted(label: str, width: float) -> str:
        while label and draw.textlength(label, font=font) > width:
            label = label[:-2] + "…" if len(label) > 1 else ""
        return label

    names = [str(c) for c in classes]
    tiling = grid_tiling(grid, img.shape[:2])
    if tiling is not None and len(names) == tiling[1]:
        _rows, _cols, _ch, cw, pad = tiling
        for j, name in enumerate(names):
            label = fitted(name, cw * factor)
            x = j * (cw + pad) * factor + (cw * factor - draw.textlength(label, font=font)) / 2
            draw.text((x, band / 2), label, fill="black", font=font, anchor="lm")
    else:
        draw.text((2, band / 2), fitted("classes: " + ", ".join(names), big.shape[1] - 4), fill="black", font=font,
                  anchor="lm")
    return np.asarray(canvas)


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
