"""Write the photo folders of docs/worked-example.md from images that ship inside pip wheels (no download).

    python docs/examples/make_photo_folder.py OUT

OUT/val/<WordNet id>/<photo>.png   the labelled photos: every bundled photo that shows an ImageNet-1k class
                                   (scikit-image's chelsea, coffee, rocket, camera; scikit-learn's china), one
                                   folder per class, named by WordNet id (read with --class-map imagenet)
OUT/unlabelled/<photo>_<k>.png     label-free images for `shiftaudit patch --distill`: seeded random crops
                                   (scale, aspect, position, mirror) of the *other* bundled images, so that the
                                   distillation never sees a photo it is evaluated on

Only images inside the installed scikit-image and scikit-learn wheels are used: skimage.data's loaders that read
the wheel's own files, never the ones that fetch from the network.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# The labelled photos: file in skimage/data (or sklearn's sample images), ImageNet WordNet id, class name.
# Each label was chosen from what the photo shows, before looking at the model's prediction.
LABELLED = [
    ("chelsea.png", "n02123045", "tabby"),  # Chelsea the cat, a tabby
    ("coffee.png", "n07920052", "espresso"),  # a cup of coffee with crema, on a saucer
    ("rocket.jpg", "n03773504", "missile"),  # a rocket on its launch pad (ImageNet has no 'rocket')
    ("camera.png", "n04485082", "tripod"),  # the cameraman: a camera on a tripod (grayscale)
    ("china.jpg", "n03877845", "palace"),  # the Summer Palace, Beijing (scikit-learn)
]

# Bundled images with no ImageNet-1k class (a person, a dahlia, a motorbike, textures, scans, drawings): the
# unlabelled pool for distillation. Together with the labelled photos this is every PNG/JPEG bundled in the two wheels
# except skimage's near-duplicate motorcycle_right, the 102-px microaneurysms crop and the grayscale chessboard.
UNLABELLED = [
    "astronaut.png",
    "motorcycle_left.png",
    "flower.jpg",
    "horse.png",
    "coins.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "color.png",
    "logo.png",
    "moon.png",
    "page.png",
    "text.png",
    "clock_motion.png",
    "cell.png",
    "chessboard_RGB.png",
    "phantom.png",
]
CROPS_PER_IMAGE = 8
CROP_SIZE = 256


def _skimage_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def _open(name: str) -> Image.Image:
    if name in ("china.jpg", "flower.jpg"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(name))
    path = _skimage_dir() / name
    if not path.is_file():
        raise SystemExit(f"{name} is not in the installed scikit-image wheel ({path}); install scikit-image")
    image = Image.open(path)
    if image.mode in ("RGBA", "LA", "P"):  # horse, logo: transparent background -> white
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB") if image.mode != "L" else image


def _random_crop(image: Image.Image, rng: random.Random) -> Image.Image:
    """A RandomResizedCrop-style view: 25-100 % of the area, aspect 3/4-4/3, random place, mirrored half the time."""
    w, h = image.size
    for _ in range(20):
        area = rng.uniform(0.25, 1.0) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round((area * aspect) ** 0.5)), int(round((area / aspect) ** 0.5))
        if cw <= w and ch <= h:
            break
    else:
        cw = ch = min(w, h)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    crop = image.crop((x, y, x + cw, y + ch)).resize((CROP_SIZE, CROP_SIZE), Image.BICUBIC)
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def main(out: str) -> None:
    root = Path(out)
    val, pool = root / "val", root / "unlabelled"
    for folder in (val, pool):
        if folder.exists() and any(folder.iterdir()):
            raise SystemExit(f"{folder} exists and is not empty; remove it or pick another folder")
    for name, wnid, cls in LABELLED:
        (val / wnid).mkdir(parents=True, exist_ok=True)
        _open(name).save(val / wnid / (Path(name).stem + ".png"))
        print(f"val/{wnid}/{Path(name).stem}.png  ({cls})")
    pool.mkdir(parents=True, exist_ok=True)
    rng = random.Random(14)
    for name in UNLABELLED:
        image = _open(name)
        for k in range(CROPS_PER_IMAGE):
            _random_crop(image, rng).save(pool / f"{Path(name).stem}_{k:02d}.png")
    print(
        f"unlabelled/: {len(UNLABELLED) * CROPS_PER_IMAGE} crops ({CROPS_PER_IMAGE} of each of "
        f"{len(UNLABELLED)} images, {CROP_SIZE}x{CROP_SIZE})"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
