"""Image data for the diffusion task: the shipped digits and emoji, a folder of PNG/JPEG files, or an .npz.

    digits   1797 grey 8x8 handwritten digits (UCI optdigits via scikit-learn), labels 0-9, upsampled to
             16x16 (the CPU default; trainers/assets/sklearn_digits.csv.gz); captions "the digit seven",
             "a 7" and "a thin 7" or "a bold 7" (digit_captions)
    emoji    colour 32x32 Noto Color Emoji on white, unlabelled (the full-size default;
             trainers/assets/noto_emoji_32.npz); captioned by their Unicode names when the file has `names`
    DIR      every .png/.jpg/.jpeg below DIR, resized (shorter side) and centre-cropped to data.image_size;
             when DIR holds sub-folders of images, each sub-folder is a class (torchvision's ImageFolder).
             Captions: NAME.txt beside NAME.png (one caption a line, each line a variant), and/or
             DIR/captions.jsonl, one {"file": "NAME.png", "caption": "..."} a line (a file named again: a variant)
    FILE.npz key `images` (N,H,W) or (N,H,W,C), uint8 0-255 or float 0-1, optional integer `labels`, optional
             string `captions` (N,) (variants of one image separated by newlines)

Images come out as float tensors (N, C, H, W) in [-1, 1], the range DDPM trains in. Unlabelled data gets one
class, 0 (named "all"), so the same class-conditional models train on it. PNG and JPEG are decoded by Pillow.
Captions are per image a tuple of one or more variants (a batch picks one), or None for the whole set.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from trainers.config import ConfigError, open_regular

DATASETS = ("digits", "emoji")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class ImageSet:
    images: torch.Tensor            # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor            # (N,) int64 class ids in [0, num_classes)
    class_names: list[str]
    source: str
    labelled: bool = True           # False: one class "all", the labels are all 0
    captions: list[tuple[str, ...]] | None = None  # per image its caption variants; None: the data has none
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    def split(self, val_fraction: float, seed: int = 0) -> tuple["ImageSet", "ImageSet"]:
        """A fixed random train/val split (independent of the training seed), stratified by class."""
        g = torch.Generator().manual_seed(seed)
        train_idx, val_idx = [], []
        for c in range(self.num_classes):
            idx = torch.nonzero(self.labels == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            n_val = int(round(len(idx) * val_fraction))
            if len(idx) >= 2:
                n_val = min(max(n_val, 1), len(idx) - 1)
            val_idx.append(idx[:n_val])
            train_idx.append(idx[n_val:])
        tr, va = torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values
        if len(tr) == 0 or len(va) == 0:
            raise ConfigError(f"data.path={self.source}: {len(self.images)} image(s) cannot be split into train "
                              "and val; give at least 2 images")
        return self.subset(tr), self.subset(va)

    def subset(self, idx: torch.Tensor) -> "ImageSet":
        captions = None if self.captions is None else [self.captions[i] for i in idx.tolist()]
        return ImageSet(self.images[idx], self.labels[idx], self.class_names, self.source, self.labelled, captions)


def asset_path(name: str) -> Path:
    return Path(str(resources.files("trainers") / "assets" / name))


def to_unit_range(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [-1, 1] -> (N, H, W, C) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square images (N, C, s, s) to (N, C, size, size): bilinear up, antialiased area-weighted down."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    down = images.shape[-1] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=down)


# --- the shipped data sets -------------------------------------------------------------------------
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as (N, 8, 8) uint8 values 0-16 and (N,) int64 labels."""
    with gzip.open(asset_path("sklearn_digits.csv.gz"), "rt") as f:
        rows = np.array([[int(float(v)) for v in row] for row in csv.reader(f) if row], dtype=np.int64)
    return rows[:, :64].reshape(-1, 8, 8).astype(np.uint8), rows[:, 64]


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_prompt(d: int) -> str:
    """The caption every digit d has among its variants: "the digit seven"."""
    return f"the digit {DIGIT_WORDS[d]}"


def digit_captions(pixels: np.ndarray, labels: np.ndarray) -> list[tuple[str, ...]]:
    """Per digit image: ("the digit seven", "a 7", "a thin 7" or "a bold 7"). Thin or bold is the image's ink
    (the sum of its 8x8 intensities) against the median ink of the images of the same digit: below the median
    is thin, else bold (so each digit splits in half; a 1 has less ink than an 8 without being thinner)."""
    ink = pixels.reshape(len(pixels), -1).sum(axis=1)
    median = {d: np.median(ink[labels == d]) for d in np.unique(labels)}
    return [(digit_prompt(int(d)), f"a {d}", f"a {'thin' if m < median[d] else 'bold'} {d}")
            for m, d in zip(ink, labels)]


def load_digits(image_size: int = 16) -> ImageSet:
    pixels, labels = load_digits_arrays()
    x = torch.from_numpy(pixels).float().unsqueeze(1) / 16.0 * 2 - 1      # (N, 1, 8, 8) in [-1, 1]
    x = resize(x, image_size).clamp(-1, 1)
    return ImageSet(x, torch.from_numpy(labels), [str(d) for d in range(10)], "embedded digits (8x8 -> "
                    f"{image_size}x{image_size})", captions=digit_captions(pixels, labels))


def load_emoji(image_size: int = 32, path: Path | None = None) -> ImageSet:
    """The shipped emoji (or an .npz of the same layout at `path`): `images`, and `names` as captions when present."""
    with np.load(path or asset_path("noto_emoji_32.npz")) as z:
        imgs = z["images"]
        names = [str(n) for n in z["names"]] if "names" in z.files else None
    x = resize(to_unit_range(imgs), image_size).clamp(-1, 1)
    captions = None if names is None else [(clean_caption(n),) for n in names]
    return ImageSet(x, torch.zeros(len(x), dtype=torch.long), ["all"], "embedded Noto emoji", labelled=False,
                    captions=captions)


# --- captions ----------------------------------------------------------------------------------------
CAPTIONS_JSONL = "captions.jsonl"


def clean_caption(text: str) -> str:
    """One line of caption: runs of whitespace (tabs, newlines) as one space, no space at the ends."""
    return " ".join(text.split())


def caption_variants(text: str) -> tuple[str, ...]:
    """A caption file's or string's variants: its non-blank lines, each cleaned."""
    return tuple(c for c in (clean_caption(line) for line in text.splitlines()) if c)


def read_caption_file(path: Path) -> tuple[str, ...]:
    """NAME.txt beside NAME.png: its lines are the image's caption variants."""
    fix = "write the caption(s) as UTF-8 text, one a line"
    with open_regular(path, f"data.path: {path}", fix) as f:
        data = f.read()
    try:
        variants = caption_variants(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"data.path: {path} is not UTF-8 text; {fix}") from None
    if not variants:
        raise ConfigError(f"data.path: {path} holds no caption; {fix}, or delete it")
    return variants


def read_captions_jsonl(path: Path, root: Path, files: list[Path]) -> dict[Path, list[str]]:
    """DIR/captions.jsonl: {"file": path relative to DIR, "caption": text} a line -> captions by image file."""
    fix = 'write one {"file": "NAME.png", "caption": "..."} object a line, file relative to the folder'
    with open_regular(path, f"data.path: {path}", fix) as f:
        data = f.read()
    known = set(files)
    out: dict[Path, list[str]] = {}
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"data.path: {path} is not UTF-8 text; {fix}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"data.path: {path} line {n} is not JSON ({e}); {fix}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("file"), str) or not isinstance(rec.get("caption"), str):
            raise ConfigError(f"data.path: {path} line {n} lacks a string `file` and `caption`; {fix}")
        image = root / rec["file"]
        if image not in known:
            raise ConfigError(f"data.path: {path} line {n} names {rec['file']!r}, not an image of the folder; "
                              f"{fix}")
        caption = clean_caption(rec["caption"])
        if not caption:
            raise ConfigError(f"data.path: {path} line {n} has an empty caption; give it text or drop the line")
        out.setdefault(image, []).append(caption)
    return out


def folder_captions(root: Path, files: list[Path]) -> list[tuple[str, ...]] | None:
    """The captions of a folder's images (NAME.txt beside each, and DIR/captions.jsonl), None when it has none;
    a folder that captions some of its images but not all is refused, naming the first without one."""
    listed = read_captions_jsonl(root / CAPTIONS_JSONL, root, files) if (root / CAPTIONS_JSONL).exists() else {}
    captions = []
    for image in files:
        txt = image.with_suffix(".txt")
        variants = list(listed.get(image, []))
        if txt.exists():
            variants.extend(read_caption_file(txt))
        captions.append(tuple(variants))
    if not any(captions):
        return None
    missing = next((f for f, c in zip(files, captions) if not c), None)
    if missing is not None:
        raise ConfigError(f"data.path={root}: {missing} has no caption while other images have; write "
                          f"{missing.with_suffix('.txt').name} beside it or a line for it in {CAPTIONS_JSONL}")
    return captions


# --- user data ---------------------------------------------------------------------------------------
def square_crop_resize(img: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, C) uint8 -> (C, size, size) in [-1, 1]: shorter side to `size`, then the centre square."""
    x = to_unit_range(img[None])                       # (1, C, H, W)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[0, :, top:top + size, left:left + size].clamp(-1, 1)


def _pixels(im: Image.Image) -> np.ndarray:
    """An opened image -> (H, W, C) uint8, C = 1 (grey) or 3; transparency composited on white."""
    if im.mode in ("I", "I;16", "I;16B"):  # 16-bit grey PNG: scale to 8 bits (convert("L") clips at 255)
        arr = (np.asarray(im).astype(np.float64) / 257).round().clip(0, 255).astype(np.uint8)
        return arr[..., None]
    if im.mode in ("RGBA", "LA", "P"):
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    im = im.convert("L" if im.mode in ("L", "1") else "RGB")
    arr = np.array(im)  # a writable copy: torch.from_numpy warns on read-only arrays
    return arr[..., None] if arr.ndim == 2 else arr


def read_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes to (H, W, C) uint8 with C = 1 or 3; alpha is composited on white."""
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG file")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            return _pixels(im)
    except (OSError, SyntaxError) as e:  # PIL raises SyntaxError for a broken chunk
        raise ValueError(f"broken PNG ({e})") from None


def decode_image_file(path: Path) -> np.ndarray:
    """A PNG or JPEG file -> (H, W, C) uint8 with C = 1 or 3. Only a regular file is opened (a pipe named
    x.png would block), and an image whose header claims more pixels than Pillow's decompression-bomb limit
    is refused before it is decoded."""
    with open_regular(path, f"data.path: {path}", "remove it from the folder") as f:
        try:
            with Image.open(f) as im:
                return _pixels(im)
        except (OSError, SyntaxError, Image.DecompressionBombError, ValueError) as e:  # UnidentifiedImageError too
            raise ConfigError(f"data.path: cannot decode {path} ({e}); remove or re-save the file") from None


def load_folder(root: Path, image_size: int) -> ImageSet:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"data.path={root}: no .png/.jpg/.jpeg images found; put images in the folder or "
                          "give an .npz with key `images`")
    # Sub-folders that hold images are classes; images directly in root (with sub-folders too) are one class.
    class_of = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in files]
    names = sorted(set(class_of))
    labelled = len(names) > 1
    decoded = [decode_image_file(p) for p in files]
    channels = 1 if all(a.shape[-1] == 1 for a in decoded) else 3
    tensors = [square_crop_resize(np.repeat(a, 3, axis=-1) if a.shape[-1] < channels else a, image_size)
               for a in decoded]
    labels = torch.tensor([names.index(c) for c in class_of], dtype=torch.long) if labelled else \
        torch.zeros(len(files), dtype=torch.long)
    return ImageSet(torch.stack(tensors), labels, [n or "." for n in names] if labelled else ["all"],
                    f"{root} ({len(files)} images)", labelled=labelled, captions=folder_captions(root, files))


def _check_fits(path: Path, z) -> None:
    """A compressed array can claim any size: refuse one larger than the memory available, before it is read."""
    import psutil

    size = sum(z.zip.getinfo(f"{k}.npy").file_size for k in z.files if f"{k}.npy" in z.zip.namelist())
    free = psutil.virtual_memory().available
    if size > free:
        raise ConfigError(f"data.path={path}: its arrays are {size / 2**30:.1f} GiB uncompressed, more than the "
                          f"{free / 2**30:.1f} GiB of memory available; give a smaller data set")


def load_npz(path: Path, image_size: int) -> ImageSet:
    fix = "give an .npz with key `images`"
    with open_regular(path, f"data.path={path}", fix) as f:
        try:
            z = np.load(f)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ConfigError(f"data.path={path}: is a single .npy array, not an .npz archive; save it with "
                                  "np.savez(path, images=...)")
            with z:
                if "images" not in z.files:
                    raise ConfigError(f"data.path={path}: no key `images` (has {', '.join(z.files) or 'none'}); save "
                                      "the images as np.savez(path, images=..., labels=...)")
                _check_fits(path, z)
                imgs, labels = z["images"], (z["labels"] if "labels" in z.files else None)
                texts = z["captions"] if "captions" in z.files else None
        except ConfigError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # truncated, not a zip, pickled objects
            raise ConfigError(f"data.path={path}: cannot read the .npz ({e}); {fix}") from None
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    if imgs.ndim != 4 or imgs.shape[-1] not in (1, 3) or len(imgs) < 2:
        raise ConfigError(f"data.path={path}: `images` has shape {imgs.shape}; expected (N, H, W) or (N, H, W, C) "
                          "with C 1 or 3 and N >= 2")
    if imgs.dtype != np.uint8:
        if not np.issubdtype(imgs.dtype, np.floating) or imgs.min() < 0 or imgs.max() > 1:
            raise ConfigError(f"data.path={path}: `images` must be uint8 0-255 or float 0-1, not {imgs.dtype} "
                              f"in [{imgs.min()}, {imgs.max()}]")
        imgs = (imgs * 255).round().astype(np.uint8)
    x = torch.stack([square_crop_resize(a, image_size) for a in imgs])
    captions = None if texts is None else npz_captions(path, texts, len(imgs))
    if labels is None:
        return ImageSet(x, torch.zeros(len(x), dtype=torch.long), ["all"], str(path), labelled=False,
                        captions=captions)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(imgs) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ConfigError(f"data.path={path}: `labels` must be {len(imgs)} non-negative integers (one per image)")
    n = int(labels.max()) + 1
    return ImageSet(x, torch.from_numpy(labels.astype(np.int64)), [str(i) for i in range(n)], str(path),
                    captions=captions)


def npz_captions(path: Path, texts: np.ndarray, n: int) -> list[tuple[str, ...]]:
    """An .npz's `captions`: one string per image, its variants separated by newlines."""
    fix = "save np.savez(path, images=..., captions=np.array([...])) with one caption string per image"
    if texts.dtype.kind != "U" or texts.shape != (n,):
        raise ConfigError(f"data.path={path}: `captions` is {texts.dtype} of shape {texts.shape}, not {n} strings; "
                          f"{fix}")
    captions = [caption_variants(str(t)) for t in texts]
    empty = next((i for i, c in enumerate(captions) if not c), None)
    if empty is not None:
        raise ConfigError(f"data.path={path}: caption {empty} is empty; {fix}")
    return captions


def image_source(dataset: str, path: str = "") -> tuple[str, Path | None]:
    """Where a diffusion preset's images come from, checked without reading them: ("folder", DIR),
    ("npz", FILE) or (a shipped data set, None); ConfigError names data.path or data.dataset otherwise."""
    if path:
        p = Path(path).expanduser()
        if not p.exists():
            raise ConfigError(f"data.path={path}: not found; give a folder of PNG/JPEG images or an .npz file")
        if p.is_dir():
            return "folder", p
        if p.suffix.lower() == ".npz":
            with open_regular(p, f"data.path={path}", "give a folder of PNG/JPEG images or an .npz file"):
                return "npz", p
        if p.suffix.lower() in IMAGE_SUFFIXES:
            raise ConfigError(f"data.path={path}: is a single image; give the folder that holds the images")
        raise ConfigError(f"data.path={path}: unsupported file type; give a folder of PNG/JPEG images or an .npz")
    if dataset not in DATASETS:
        raise ConfigError(f"data.dataset={dataset!r} is not a shipped image set; use one of {', '.join(DATASETS)} "
                          "or set data.path")
    return dataset, None


def load_images(dataset: str, path: str = "", image_size: int = 16) -> ImageSet:
    """The data set a diffusion preset trains on: `data.path` when given, else the named shipped set."""
    kind, p = image_source(dataset, path)
    if kind == "folder":
        return load_folder(p, image_size)
    if kind == "npz":
        return load_npz(p, image_size)
    return load_digits(image_size) if kind == "digits" else load_emoji(image_size)
