"""Write ``shiftaudit/assets/imagenet_class_index.json``: the ImageNet-1k class index (WordNet id and name per index).

Where the data comes from (both installed with the dev dependencies, nothing downloaded):

* WordNet ids in the standard ILSVRC-2012 class order: ``timm/data/_info/imagenet_synsets.txt`` of the timm package
  (1000 lines; the order is the sorted order of the ids, which is how ImageNet-1k indices were assigned).
* Class names: ``torchvision.models._meta._IMAGENET_CATEGORIES``, the names torchvision's pretrained weights carry
  (unique: the two "crane" and "maillot" synsets are told apart there).

The script checks the two against each other (each name must be a WordNet lemma of its id, with the two
disambiguated exceptions) before writing. The file has the common ``{"0": ["n01440764", "tench"], ...}`` layout, so it
is also a valid ``--class-map`` file. At run time shiftaudit reads only the packaged file (no timm needed).

    .venv/bin/python scripts/make_imagenet_classes.py
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
from torchvision.models._meta import _IMAGENET_CATEGORIES

OUT = Path(__file__).resolve().parent.parent / "shiftaudit" / "assets" / "imagenet_class_index.json"


def main() -> None:
    info = Path(timm.__file__).parent / "data" / "_info"
    wnids = (info / "imagenet_synsets.txt").read_text().split()
    names = list(_IMAGENET_CATEGORIES)
    assert len(wnids) == len(names) == 1000 and wnids == sorted(wnids) and len(set(names)) == 1000
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    mismatched = [n for w, n in zip(wnids, names) if n.lower() not in {x.strip().lower() for x in lemmas[w].split(",")}]
    assert mismatched == ["crane bird", "maillot tank suit"], mismatched  # torchvision's disambiguated names
    index = {str(i): [w, n] for i, (w, n) in enumerate(zip(wnids, names))}
    lines = ",\n".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in index.items())
    OUT.write_text("{\n" + lines + "\n}\n", encoding="utf-8")  # one class per line: diffs stay readable
    print(f"wrote {OUT} ({len(index)} classes)")


if __name__ == "__main__":
    main()
