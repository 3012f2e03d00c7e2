"""Builders of tiny dataset trees in each dataset's real archive layout, for the reader and
pipeline tests. Images are small generated JPEG/PNG files; helpers also write the awkward kinds
(CMYK JPEG, RGBA and palette PNG, grayscale, truncated JPEG, a text file named .jpg).
"""

from __future__ import annotations

import io
import os
from typing import Dict, Iterable, Sequence

import numpy as np
from PIL import Image

IMAGE_KINDS = ("rgb_jpeg", "rgb_png", "cmyk_jpeg", "rgba_png", "palette_png", "gray_jpeg",
               "truncated_jpeg", "text_jpg")
BROKEN_KINDS = ("truncated_jpeg", "text_jpg")


def pattern(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB uint8 image (JPEG keeps smooth images close to the original)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 4), max(2, width // 4), 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def encode(kind: str, height: int = 12, width: int = 16, seed: int = 0) -> bytes:
    """Encoded bytes of one image of ``kind`` (see IMAGE_KINDS)."""
    rgb = Image.fromarray(pattern(height, width, seed))
    buffer = io.BytesIO()
    if kind == "rgb_jpeg":
        rgb.save(buffer, "JPEG", quality=95)
    elif kind == "rgb_png":
        rgb.save(buffer, "PNG")
    elif kind == "cmyk_jpeg":
        rgb.convert("CMYK").save(buffer, "JPEG", quality=95)
    elif kind == "rgba_png":
        alpha = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8))
        rgba = rgb.copy()
        rgba.putalpha(alpha)
        rgba.save(buffer, "PNG")
    elif kind == "palette_png":
        rgb.convert("P", palette=Image.ADAPTIVE, colors=16).save(buffer, "PNG")
    elif kind == "gray_jpeg":
        rgb.convert("L").save(buffer, "JPEG", quality=95)
    elif kind == "truncated_jpeg":
        big = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8))
        big.save(buffer, "JPEG", quality=95)
        return buffer.getvalue()[: len(buffer.getvalue()) // 2]
    elif kind == "text_jpg":
        return b"this is not an image, only text saved with a .jpg name\n"
    else:
        raise ValueError(f"unknown image kind {kind!r}; expected one of {IMAGE_KINDS}")
    return buffer.getvalue()


def write_image(path: str, kind: str = "rgb_jpeg", height: int = 12, width: int = 16, seed: int = 0) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(encode(kind, height, width, seed))
    return path


def _kind_for(index: int, kinds: Sequence[str]) -> str:
    return kinds[index % len(kinds)]


def build_cub(
    root: str, per_class: Dict[int, int], kinds: Sequence[str] = ("rgb_jpeg",),
    missing: Iterable[str] = (),
) -> str:
    """CUB_200_2011/ under ``root`` with ``per_class[class_id]`` images (class ids 1..200).

    ``missing`` names relative image paths to list in images.txt but not write.
    Returns the CUB_200_2011 folder.
    """
    folder = os.path.join(root, "CUB_200_2011")
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    missing = set(missing)
    images, labels, classes = [], [], []
    image_id = 0
    for class_id in sorted(per_class):
        class_dir = f"{class_id:03d}.Bird_{class_id}"
        classes.append(f"{class_id} {class_dir}")
        for j in range(per_class[class_id]):
            image_id += 1
            relative = f"{class_dir}/Bird_{class_id}_{j:04d}.jpg"
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {class_id}")
            if relative not in missing:
                write_image(os.path.join(folder, "images", relative), _kind_for(image_id, kinds),
                            seed=image_id)
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("classes.txt", classes)):
        with open(os.path.join(folder, name), "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return folder


def build_cars196(root: str, per_class: Dict[int, int], missing: Iterable[str] = ()) -> str:
    """cars_annos.mat + car_ims/ under ``root`` (class ids 1..196). Returns ``root``."""
    from scipy.io import savemat

    missing = set(missing)
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    rows = []
    number = 0
    for class_id in sorted(per_class):
        for _ in range(per_class[class_id]):
            number += 1
            relative = f"car_ims/{number:06d}.jpg"
            # the archive's own train/test flag alternates; the zero-shot reader must ignore it
            rows.append((relative, 1, 1, 10, 10, class_id, number % 2))
            if relative not in missing:
                write_image(os.path.join(root, relative), seed=number)
    annotations = np.empty((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        annotations[0, i] = tuple(np.array([[v]]) if not isinstance(v, str) else v for v in row)
    names = np.empty((1, 196), dtype="O")
    names[0, :] = [f"Car model {i}" for i in range(1, 197)]
    savemat(os.path.join(root, "cars_annos.mat"), {"annotations": annotations, "class_names": names})
    return root


def build_sop(root: str, train_classes: Dict[int, int], test_classes: Dict[int, int],
              missing: Iterable[str] = ()) -> str:
    """Stanford_Online_Products/ under ``root``; dict class_id -> image count. Returns the folder."""
    folder = os.path.join(root, "Stanford_Online_Products")
    os.makedirs(folder, exist_ok=True)
    missing = set(missing)
    header = "image_id class_id super_class_id path"
    info, tables = [header], {}
    image_id = 0
    for name, classes in (("Ebay_train.txt", train_classes), ("Ebay_test.txt", test_classes)):
        lines = [header]
        for class_id in sorted(classes):
            for j in range(classes[class_id]):
                image_id += 1
                relative = f"bicycle_final/{class_id}_{j}.JPG"
                line = f"{image_id} {class_id} 1 {relative}"
                lines.append(line)
                info.append(line)
                if relative not in missing:
                    write_image(os.path.join(folder, relative), seed=image_id)
        tables[name] = lines
    tables["Ebay_info.txt"] = info
    for name, lines in tables.items():
        with open(os.path.join(folder, name), "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return folder


def build_inshop(root: str, train_items: Dict[str, int], test_items: Dict[str, tuple]) -> str:
    """In-Shop layout under ``root``: train item -> count; test item -> (queries, galleries)."""
    rows = []
    for item, count in sorted(train_items.items()):
        rows += [(f"img/WOMEN/Dresses/{item}/{j:02d}_1_front.jpg", item, "train") for j in range(count)]
    for item, (queries, galleries) in sorted(test_items.items()):
        rows += [(f"img/MEN/Tees/{item}/{j:02d}_2_side.jpg", item, "query") for j in range(queries)]
        rows += [(f"img/MEN/Tees/{item}/{j:02d}_3_back.jpg", item, "gallery") for j in range(galleries)]
    for i, (relative, _, _) in enumerate(rows):
        write_image(os.path.join(root, relative), seed=i)
    os.makedirs(os.path.join(root, "Eval"), exist_ok=True)
    with open(os.path.join(root, "Eval", "list_eval_partition.txt"), "w") as handle:
        handle.write(f"{len(rows)}\nimage_name item_id evaluation_status\n")
        handle.writelines(f"{r}   {i}   {s}\n" for r, i, s in rows)
    return root


def write_idx(path: str, array: np.ndarray) -> str:
    """Writes a uint8 array in IDX format (plain, no gzip)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with open(path, "wb") as handle:
        handle.write(header + array.tobytes())
    return path
