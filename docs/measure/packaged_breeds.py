"""Check of a backbone's packaged ImageNet weights as renamed for timm: top-1 ImageNet breed of each
photo whose file name starts with its synset (DogFLW's names), fed 0.5 / 0.5 at the given size.

    python docs/measure/packaged_breeds.py $DOGFLW_MINI/val/images                       # Lite0, 224 px
    python docs/measure/packaged_breeds.py $DOGFLW_MINI/val/images --backbone efficientnet_lite1 --size 240
"""
import argparse
import re
from pathlib import Path

import timm
import torch
from timm.data import ImageNetInfo

import _repo  # the repository on sys.path: docs/measure/_repo.py
from basics.backbone_weights import PACKAGED, load_packaged_weights, timm_host
from basics.images import read_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", help="photos named SYNSET_*.jpg")
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=sorted(PACKAGED))
    parser.add_argument("--size", type=int, default=224, help="square input side in pixels")
    args = parser.parse_args()
    synsets = ImageNetInfo()
    network = timm.create_model(timm_host(args.backbone), num_classes=1000).eval()
    load_packaged_weights(args.backbone, network)
    photos = [p for p in sorted(Path(args.folder).iterdir()) if re.match(r"n\d{8}_", p.name)]
    hits = 0
    for path in photos:
        image = torch.tensor(read_image(path)).permute(2, 0, 1).float()[None] / 255
        image = torch.nn.functional.interpolate(image, size=(args.size,) * 2, mode="bilinear", align_corners=False)
        with torch.no_grad():
            guess = network((image - 0.5) / 0.5).argmax().item()
        hits += synsets.index_to_label_name(guess) == path.name[:9]
    print(f"{args.backbone} at {args.size} px: top-1 {hits}/{len(photos)} = {hits / len(photos):.2f}")


if __name__ == "__main__":
    main()
