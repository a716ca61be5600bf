"""Build trainers/assets/noto_emoji_32.npz: every single-codepoint emoji of Noto Color Emoji at 32x32 on white,
each with its codepoint and Unicode name (the caption the text-to-image presets train on).

Source: Debian's fonts-noto-color-emoji 2.042 (NotoColorEmoji.ttf, SIL Open Font License 1.1). The font is a
CBDT bitmap font with one strike, 136x128 pixels at size 109: Pillow draws each glyph onto white at that size
and resizes it to 32x32 (Lanczos). Which codepoints: those of the font's cmap (read here with struct) whose
glyph draws something, less the Latin-1 characters # * 0-9 (c) (R), which are text by default and emoji only
in a sequence (keycaps, U+FE0F).

Names: Python's unicodedata (Unicode licence), lowercased. Python 3.11 knows Unicode 14.0; the font has 20
emoji of Unicode 15.0 (their names, from UnicodeData.txt 15.0, are UNICODE_15 below) and 21 private-use glyphs
that stand for flag and keycap sequences (named here as those sequences are).

    cd /tmp && apt-get download fonts-noto-color-emoji
    python scripts/build_emoji.py /tmp/fonts-noto-color-emoji_2.042-0+deb12u1_all.deb [--compare OLD.npz]
A .ttf path works too. --compare prints the mean absolute pixel difference against another build of the asset.
"""
from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

OUT = Path(__file__).resolve().parent.parent / "trainers" / "assets" / "noto_emoji_32.npz"
FONT_IN_DEB = "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
STRIKE_SIZE = 109   # the font size of the CBDT bitmaps (136x128 pixels)
SIZE = 32
FIRST_EMOJI = 0x100  # below: # * 0-9 (c) (R), text characters that are emoji only in a sequence

UNICODE_15 = {  # emoji of Unicode 15.0, newer than Python 3.11's unicodedata (14.0)
    0x1F6DC: "wireless", 0x1FA75: "light blue heart", 0x1FA76: "grey heart", 0x1FA77: "pink heart",
    0x1FA87: "maracas", 0x1FA88: "flute", 0x1FAAD: "folding hand fan", 0x1FAAE: "hair pick", 0x1FAAF: "khanda",
    0x1FABB: "hyacinth", 0x1FABC: "jellyfish", 0x1FABD: "wing", 0x1FABF: "goose", 0x1FACE: "moose",
    0x1FACF: "donkey", 0x1FADA: "ginger root", 0x1FADB: "pea pod", 0x1FAE8: "shaking face",
    0x1FAF7: "leftwards pushing hand", 0x1FAF8: "rightwards pushing hand",
}
PRIVATE_USE = {  # Noto's private-use glyphs: the carriers' ten flags and the keycaps
    **{0xFE4E5 + i: f"flag of {country}" for i, country in enumerate(
        ["japan", "united states", "france", "germany", "italy", "united kingdom", "spain", "russia", "china",
         "south korea"])},
    0xFE82C: "keycap number sign",
    **{0xFE82E + i: f"keycap digit {unicodedata.name(str((i + 1) % 10)).split()[-1].lower()}" for i in range(10)},
}


def font_codepoints(path: Path) -> list[int]:
    """The codepoints of the font's cmap, from its format-12 subtable (segmented coverage: groups of
    consecutive codepoints), read with struct."""
    data = path.read_bytes()
    num_tables = struct.unpack_from(">H", data, 4)[0]
    offsets = {struct.unpack_from(">4s", data, 12 + 16 * i)[0]: struct.unpack_from(">I", data, 12 + 16 * i + 8)[0]
               for i in range(num_tables)}
    cmap = offsets[b"cmap"]
    codepoints = set()
    for i in range(struct.unpack_from(">H", data, cmap + 2)[0]):
        sub = cmap + struct.unpack_from(">I", data, cmap + 4 + 8 * i + 4)[0]
        if struct.unpack_from(">H", data, sub)[0] != 12:
            continue
        for g in range(struct.unpack_from(">I", data, sub + 12)[0]):
            start, end, _glyph = struct.unpack_from(">III", data, sub + 16 + 12 * g)
            codepoints.update(range(start, end + 1))
    if not codepoints:
        raise SystemExit(f"{path}: no format-12 cmap subtable; give NotoColorEmoji.ttf")
    return sorted(codepoints)


def name_of(cp: int) -> str:
    name = unicodedata.name(chr(cp), "") or UNICODE_15.get(cp) or PRIVATE_USE.get(cp)
    if not name:
        raise SystemExit(f"U+{cp:04X} has no name: add it to UNICODE_15 or PRIVATE_USE")
    return name.lower()


def render(font: ImageFont.FreeTypeFont, cp: int) -> np.ndarray | None:
    """The glyph on white, resized to SIZE x SIZE: (SIZE, SIZE, 3) uint8; None when it draws nothing."""
    if font.getmask(chr(cp), mode="RGBA").getbbox() is None:
        return None
    _, _, w, h = font.getbbox(chr(cp))
    im = Image.new("RGB", (w, h), (255, 255, 255))
    ImageDraw.Draw(im).text((0, 0), chr(cp), font=font, embedded_color=True)
    return np.asarray(im.resize((SIZE, SIZE), Image.LANCZOS))


def build(font_path: Path) -> dict[str, np.ndarray]:
    font = ImageFont.truetype(str(font_path), STRIKE_SIZE, layout_engine=ImageFont.Layout.BASIC)
    images, codepoints = [], []
    for cp in font_codepoints(font_path):
        if cp < FIRST_EMOJI:
            continue
        image = render(font, cp)
        if image is not None:
            images.append(image)
            codepoints.append(cp)
    return {"images": np.stack(images), "codepoints": np.array(codepoints, dtype=np.int64),
            "names": np.array([name_of(cp) for cp in codepoints])}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="fonts-noto-color-emoji_*.deb or NotoColorEmoji.ttf")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--compare", type=Path, help="another noto_emoji_32.npz: print the mean absolute difference")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        font_path = args.source
        if args.source.suffix == ".deb":
            subprocess.run(["dpkg-deb", "-x", str(args.source), tmp], check=True)
            font_path = Path(tmp) / FONT_IN_DEB
        arrays = build(font_path)
    if args.compare:
        with np.load(args.compare) as old:
            before = old["images"]
        if before.shape != arrays["images"].shape:
            print(f"shapes differ: {before.shape} before, {arrays['images'].shape} now")
        else:
            diff = np.abs(before.astype(np.float64) - arrays["images"].astype(np.float64))
            print(f"mean absolute difference: {diff.mean():.3f} of 255 (per image: median "
                  f"{np.median(diff.mean(axis=(1, 2, 3))):.3f}, max {diff.mean(axis=(1, 2, 3)).max():.3f})")
    np.savez_compressed(args.out, **arrays)
    print(f"{args.out}: {len(arrays['images'])} images, {args.out.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
