"""Image samples in the terminal and on disk: payload decoding, half-block rendering, PNG writing/reading; the
captions of image data sets (digits, emoji names, folders, .npz)."""
from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from rich.console import Console
from rich.style import Style

from cockpit.images import (
    UPPER_HALF,
    decode_image,
    fit_grid,
    halfblock,
    labelled_grid,
    png_bytes,
    resize_area,
    upscale,
    write_png,
)
from trainers.config import ConfigError
from trainers.images import load_digits, load_emoji, load_images, read_png
from trainers.tasks.diffusion import image_grid, image_payload


def payload(img: np.ndarray) -> dict:
    h, w, c = img.shape
    return {"kind": "image", "image": {"h": h, "w": w, "c": c, "data": base64.b64encode(img.tobytes()).decode()}}


def cell_styles(text) -> list[list[Style]]:
    """The style of every character, line by line."""
    lines, current = [], []
    for ch, seg in zip(text.plain, _char_styles(text)):
        if ch == "\n":
            lines.append(current)
            current = []
        else:
            current.append(seg)
    lines.append(current)
    return lines


def _char_styles(text):
    styles = [None] * len(text.plain)
    for span in text.spans:
        for i in range(span.start, span.end):
            styles[i] = span.style if isinstance(span.style, Style) else Style.parse(span.style)
    return styles


def rgb_of(color) -> tuple:
    t = color.get_truecolor()
    return (t.red, t.green, t.blue)


# --- decoding ---------------------------------------------------------------------------------------
def test_decode_image_accepts_the_event_or_its_image_field():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    p = payload(img)
    assert np.array_equal(decode_image(p), img)
    assert np.array_equal(decode_image(p["image"]), img)


def test_decode_image_rejects_truncated_or_malformed_data():
    p = payload(np.zeros((2, 2, 3), dtype=np.uint8))
    p["image"]["h"] = 3
    with pytest.raises(ValueError, match="expected h\\*w\\*c"):
        decode_image(p)
    with pytest.raises(ValueError, match="not an image payload"):
        decode_image({"image": {"h": 1, "w": 1, "c": 1, "data": "***"}})
    with pytest.raises(ValueError, match="not an image payload"):
        decode_image({"text": "hello"})


# --- half blocks ------------------------------------------------------------------------------------
def test_halfblock_puts_the_top_pixel_in_the_foreground_and_the_bottom_in_the_background():
    img = np.array([[[255, 0, 0], [0, 255, 0]],
                    [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    text = halfblock(img)
    assert text.plain == UPPER_HALF * 2
    (a, b), = cell_styles(text)
    assert rgb_of(a.color) == (255, 0, 0) and rgb_of(a.bgcolor) == (0, 0, 255)
    assert rgb_of(b.color) == (0, 255, 0) and rgb_of(b.bgcolor) == (10, 20, 30)


def test_halfblock_size_is_width_by_half_height_and_an_odd_last_row_has_no_background():
    img = np.full((5, 7, 1), 200, dtype=np.uint8)  # grey: replicated to rgb
    text = halfblock(img)
    lines = text.plain.split("\n")
    assert len(lines) == 3 and all(line == UPPER_HALF * 7 for line in lines)
    styles = cell_styles(text)
    assert rgb_of(styles[0][0].color) == (200, 200, 200) and rgb_of(styles[0][0].bgcolor) == (200, 200, 200)
    assert rgb_of(styles[2][6].color) == (200, 200, 200) and styles[2][6].bgcolor is None


def test_halfblock_shrinks_wide_images_to_max_width_by_averaging():
    img = np.zeros((4, 32, 3), dtype=np.uint8)
    img[:, 1::2] = 200  # alternating black/200 columns average to 100
    text = halfblock(img, max_width=16)
    lines = text.plain.split("\n")
    assert [len(line) for line in lines] == [16]  # factor 2: 32 -> 16 columns, 4 -> 2 rows -> 1 line
    assert rgb_of(cell_styles(text)[0][3].color) == (100, 100, 100)
    assert len(halfblock(img, max_width=100).plain.split("\n")[0]) == 32


def test_halfblock_grid_renders_as_true_colour_text_without_a_terminal():
    # a 2x3 grid of 4x4 cells, each column a different colour, rendered the way the samples pane does
    cells = torch.stack([torch.full((3, 4, 4), v) for v in (-1.0, -1.0, 0.0, 0.0, 1.0, 1.0)])
    cells[4:, 0] = -1.0  # third column: cyan (r = 0, g = b = 255)
    grid = image_grid(cells, rows=2, cols=3)
    img = decode_image({"image": image_payload(grid)})
    assert img.shape == (9, 14, 3)
    console = Console(color_system="truecolor", width=40, record=True, force_terminal=True, file=io.StringIO())
    console.print(halfblock(img))
    out = console.export_text(styles=True, clear=False)
    lines = console.export_text().rstrip("\n").split("\n")
    assert len(lines) == 5 and all(line == UPPER_HALF * 14 for line in lines)
    assert "38;2;0;0;0;48;2;0;0;0m" in out            # column 1: black
    assert "38;2;128;128;128;48;2;128;128;128m" in out  # column 2: mid grey (0.0 -> 128), also the gaps
    assert "38;2;0;255;255;48;2;0;255;255m" in out      # column 3: cyan


# --- fitting a sample grid to the pane -----------------------------------------------------------------
def class_grid(rows=2, cols=10, cell=16, pad=1) -> tuple[np.ndarray, dict]:
    """A sample grid whose class columns each have their own grey level (10 * column), white between cells."""
    h, w = rows * (cell + pad) - pad, cols * (cell + pad) - pad
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    for j in range(cols):
        for i in range(rows):
            img[i * (cell + pad):i * (cell + pad) + cell, j * (cell + pad):j * (cell + pad) + cell] = 10 * j
    return img, {"rows": rows, "cols": cols, "cell_h": cell, "cell_w": cell, "pad": pad}


@pytest.mark.parametrize("max_w", [20, 27, 35, 41, 60, 120, 400])
def test_fit_grid_keeps_rows_and_columns_and_scales_the_cells_down_to_the_pane(max_w):
    """A DiT-style 2x10 grid, one class per column, in panes of every width: still 2 rows of 10 columns, in
    order, the whole grid inside the pane, square cells never larger than the originals."""
    img, grid = class_grid(rows=2, cols=10, cell=32)
    out, tiling = fit_grid(img, grid, max_w, 80)
    rows, cols, ch, cw, pad = (tiling[k] for k in ("rows", "cols", "cell_h", "cell_w", "pad"))
    assert (rows, cols) == (2, 10)
    assert out.shape[:2] == (rows * (ch + pad) - pad, cols * (cw + pad) - pad)
    assert out.shape[1] <= max_w and out.shape[0] <= 80
    assert ch == cw <= 32 and cw >= 1
    if pad == 0:                                     # the gap goes only when it leaves the cells too thin
        assert (max_w - (cols - 1)) * 32 // (cols * 32) < 3
    for i in range(rows):
        for j in range(cols):                        # each cell still shows its own column's grey
            cell = out[i * (ch + pad):i * (ch + pad) + ch, j * (cw + pad):j * (cw + pad) + cw]
            assert (cell == 10 * j).all(), (i, j)


def test_fit_grid_fills_the_height_when_the_pane_is_short_and_leaves_a_grid_that_fits_alone():
    img, grid = class_grid(rows=2, cols=10, cell=16)
    out, tiling = fit_grid(img, grid, 400, 20)               # wide and short: the height decides
    assert (tiling["rows"], tiling["cols"]) == (2, 10) and out.shape[0] <= 20 and tiling["cell_h"] == 9
    same, tiling = fit_grid(img, grid, img.shape[1], img.shape[0])
    assert same is img and tiling == grid
    plain, tiling = fit_grid(img, None, 40, 100)             # no grid metadata: scaled whole
    assert plain.shape[1] <= 40 and tiling is None
    assert abs(plain.shape[0] / plain.shape[1] - img.shape[0] / img.shape[1]) < 0.05


def test_resize_area_averages_the_pixels_each_output_pixel_covers():
    img = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6, 1)
    assert resize_area(img, 2, 3)[..., 0].tolist() == [[4, 6, 8], [16, 18, 20]]       # 2x2 blocks
    assert resize_area(img, 1, 1)[0, 0, 0] == round(img.mean())
    assert resize_area(img, 8, 6)[..., 0].tolist()[:2] == [[0, 1, 2, 3, 4, 5]] * 2     # growing repeats


def test_a_saved_grid_has_each_class_written_above_its_column():
    """`w` on an image sample: the grid enlarged with crisp pixels under a white band, and in the band dark
    text over every column (over the columns, not over the gaps between them)."""
    img, grid = class_grid(rows=2, cols=3, cell=16)
    img[...] = np.where(img == 255, 255, 128)                # grey cells, white gaps
    out = labelled_grid(img, grid, ["cat", "dog", "automobile"])
    big = upscale(img)
    band = out.shape[0] - big.shape[0]
    assert band > 0 and out.shape[1] == big.shape[1]
    assert np.array_equal(out[band:], big)
    factor = big.shape[0] // img.shape[0]
    inked = (out[:band] < 128).any(axis=(0, 2))              # columns of the band with dark text in them
    for j in range(3):
        x0 = j * 17 * factor
        assert inked[x0:x0 + 16 * factor].any(), f"no label over column {j}"
    unlabelled = labelled_grid(img, grid, None)
    assert np.array_equal(unlabelled, big)


# --- PNG ----------------------------------------------------------------------------------------------
def chunks(data: bytes) -> dict[bytes, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = {}, 8
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, f"bad CRC in {kind}"
        out[kind] = out.get(kind, b"") + body
        pos += 12 + n
    return out


def unfiltered(rows: np.ndarray, c: int) -> np.ndarray:
    """The pixel bytes of decompressed IDAT rows (filter type, then the filtered bytes): PNG spec section 9,
    written out here so that the test does not trust the decoder of the library that wrote the file."""
    out = np.zeros((rows.shape[0], rows.shape[1] - 1), dtype=np.int64)
    for y, (ftype, *line) in enumerate(rows.tolist()):
        assert ftype in (0, 1, 2, 3, 4), f"row {y}: bad filter type {ftype}"
        up = out[y - 1] if y else np.zeros(out.shape[1], dtype=np.int64)
        for i, v in enumerate(line):
            a, b, d = (out[y, i - c] if i >= c else 0), up[i], (up[i - c] if i >= c else 0)
            p = a + b - d
            pa, pb, pd = abs(p - a), abs(p - b), abs(p - d)
            paeth = a if pa <= pb and pa <= pd else (b if pb <= pd else d)
            out[y, i] = (v + (0, a, b, (a + b) // 2, paeth)[ftype]) & 255
    return out.astype(np.uint8)


@pytest.mark.parametrize("c", [1, 3, 4])
def test_write_png_is_a_valid_png_that_round_trips(tmp_path, c):
    img = np.random.default_rng(c).integers(0, 256, (9, 13, c), dtype=np.uint8)
    path = write_png(tmp_path / "x.png", img)
    data = path.read_bytes()
    ch = chunks(data)
    w, h, depth, color = struct.unpack(">IIBB", ch[b"IHDR"][:10])
    assert (w, h, depth, color) == (13, 9, 8, {1: 0, 3: 2, 4: 6}[c])
    rows = np.frombuffer(zlib.decompress(ch[b"IDAT"]), dtype=np.uint8).reshape(9, 1 + 13 * c)
    assert np.array_equal(unfiltered(rows, c).reshape(9, 13, c), img)
    if c != 4:  # the reader composites alpha on white
        assert np.array_equal(read_png(data), img)


def filtered_png(img: np.ndarray, ftype: int) -> bytes:
    """Encode with one PNG filter type on every row (what image editors write), to test the decoder."""
    h, w, c = img.shape
    a = img.reshape(h, w * c).astype(np.int64)
    out = []
    for y in range(h):
        prev = a[y - 1] if y else np.zeros(w * c, dtype=np.int64)
        left = np.concatenate([np.zeros(c, dtype=np.int64), a[y, :-c]])
        upleft = np.concatenate([np.zeros(c, dtype=np.int64), prev[:-c]])
        if ftype == 1:
            pred = left
        elif ftype == 2:
            pred = prev
        elif ftype == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        out.append(bytes([ftype]) + ((a[y] - pred) & 255).astype(np.uint8).tobytes())
    base = png_bytes(img)
    ihdr = base[8:8 + 25]
    idat = zlib.compress(b"".join(out))
    body = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat) & 0xFFFFFFFF)
    return base[:8] + ihdr + body + base[-12:]


@pytest.mark.parametrize("ftype", [1, 2, 3, 4])
def test_png_reader_undoes_every_filter_type(ftype):
    img = np.random.default_rng(ftype).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    assert np.array_equal(read_png(filtered_png(img, ftype)), img)


def test_png_reader_composites_alpha_on_white():
    img = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [200, 100, 0, 128]]], dtype=np.uint8)
    out = read_png(png_bytes(img))
    assert out.shape == (1, 3, 3)
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [0, 0, 0]
    assert out[0, 2].tolist() == [227, 177, 127]


def test_replay_images_are_enlarged_to_a_visible_size_with_crisp_pixels(tmp_path):
    """`--images` on a 33-pixel-tall sample grid: a PNG whose shorter side is at least 256 pixels, each source
    pixel a square block of one colour (nearest neighbour: no blur, no new colours)."""
    import numpy as np
    from PIL import Image

    from cockpit.images import upscale, write_png

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(33, 169, 3), dtype=np.uint8)
    big = upscale(img)
    assert big.shape == (33 * 8, 169 * 8, 3)
    assert (big[::8, ::8] == img).all() and (big[7::8, 7::8] == img).all()
    write_png(tmp_path / "s.png", big)
    with Image.open(tmp_path / "s.png") as png:
        assert min(png.size) >= 256
    assert upscale(np.zeros((512, 512, 3), np.uint8)).shape == (512, 512, 3)   # large enough already
    assert upscale(np.zeros((1, 4, 1), np.uint8)).shape == (16, 64, 1)         # at most 16x


# --- captions ------------------------------------------------------------------------------------------
def test_every_digit_is_captioned_by_its_name_its_numeral_and_thin_or_bold_by_half():
    data = load_digits()
    assert len(data.captions) == len(data.images)
    for caption, label in zip(data.captions[:50], data.labels[:50].tolist()):
        assert caption[:2] == (f"the digit {['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'][label]}",
                               f"a {label}")
        assert caption[2] in (f"a thin {label}", f"a bold {label}")
    ink = data.images.sum(dim=(1, 2, 3))
    for d in range(10):
        of_d = [i for i, y in enumerate(data.labels.tolist()) if y == d]
        thin = [i for i in of_d if data.captions[i][2].startswith("a thin")]
        assert 0.35 < len(thin) / len(of_d) < 0.55, "thin and bold split each digit near its median ink"
        bold = [i for i in of_d if i not in set(thin)]
        assert ink[thin].mean() < ink[bold].mean()
    train, val = data.split(0.1)
    assert len(train.captions) == len(train.images) and len(val.captions) == len(val.images)


def test_emoji_take_their_names_as_captions_when_the_file_has_them_and_none_without(tmp_path):
    images = np.full((3, 32, 32, 3), 255, dtype=np.uint8)
    np.savez(tmp_path / "named.npz", images=images, codepoints=np.array([0x1F600, 0x1F34E, 0x1F431]),
             names=np.array(["grinning face", "red apple", "cat face"]))
    np.savez(tmp_path / "plain.npz", images=images)
    named = load_emoji(32, path=tmp_path / "named.npz")
    assert named.captions == [("grinning face",), ("red apple",), ("cat face",)] and not named.labelled
    assert load_emoji(32, path=tmp_path / "plain.npz").captions is None


def test_an_npz_may_carry_captions_with_newline_separated_variants(tmp_path):
    np.savez(tmp_path / "c.npz", images=np.zeros((2, 8, 8), dtype=np.uint8),
             captions=np.array(["a black square\nan empty box", "night"]))
    data = load_images("digits", str(tmp_path / "c.npz"), 8)
    assert data.captions == [("a black square", "an empty box"), ("night",)]
    np.savez(tmp_path / "short.npz", images=np.zeros((3, 8, 8), dtype=np.uint8), captions=np.array(["one", "two"]))
    with pytest.raises(ConfigError, match=r"short.npz: `captions` .* not 3 strings"):
        load_images("digits", str(tmp_path / "short.npz"), 8)
    np.savez(tmp_path / "blank.npz", images=np.zeros((2, 8, 8), dtype=np.uint8), captions=np.array(["one", " "]))
    with pytest.raises(ConfigError, match=r"blank.npz: caption 1 is empty"):
        load_images("digits", str(tmp_path / "blank.npz"), 8)


def folder_of(tmp_path, names: list[str]):
    root = tmp_path / "imgs"
    root.mkdir(parents=True)
    for name in names:
        write_png(root / name, np.zeros((8, 8, 3), dtype=np.uint8))
    return root


def test_a_folder_is_captioned_by_text_files_beside_its_images_and_a_captions_jsonl(tmp_path):
    root = folder_of(tmp_path, ["a.png", "b.png", "c.png"])
    (root / "a.txt").write_text("a red apple\n\n  a  fruit\t\n")
    (root / "captions.jsonl").write_text('{"file": "b.png", "caption": "a blue bird"}\n\n'
                                         '{"file": "c.png", "caption": "a cat"}\n'
                                         '{"file": "c.png", "caption": "a small cat"}\n')
    data = load_images("digits", str(root), 8)
    assert data.captions == [("a red apple", "a fruit"), ("a blue bird",), ("a cat", "a small cat")]
    assert load_images("digits", str(folder_of(tmp_path / "plain", ["x.png", "y.png"])), 8).captions is None


@pytest.mark.parametrize("jsonl,txt,match", [
    (None, {"a.txt": "an apple"}, r"b.png has no caption while other images have; write b.txt beside it"),
    ('{"file": "a.png", "caption": "x"}\nnot json\n', None, r"captions.jsonl line 2 is not JSON"),
    ('{"file": "z.png", "caption": "x"}\n', None, r"captions.jsonl line 1 names 'z.png', not an image"),
    ('{"file": "a.png"}\n', None, r"captions.jsonl line 1 lacks a string `file` and `caption`"),
    (None, {"a.txt": "\n  \n", "b.txt": "b"}, r"a.txt holds no caption"),
])
def test_bad_captions_are_config_errors_naming_the_file_and_the_fix(tmp_path, jsonl, txt, match):
    root = folder_of(tmp_path, ["a.png", "b.png"])
    if jsonl is not None:
        (root / "captions.jsonl").write_text(jsonl)
    for name, text in (txt or {}).items():
        (root / name).write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_images("digits", str(root), 8)
    assert "\n" not in str(err.value)
