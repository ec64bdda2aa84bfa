"""Check of the packaged EfficientNet-Lite0 weights as renamed for timm: top-1 ImageNet breed of each
photo whose file name starts with its synset (DogFLW's names), at 224 px, fed 0.5 / 0.5.

    python docs/measure/lite0_breeds.py $DOGFLW_MINI/val/images
"""
import re
import sys
from pathlib import Path

import timm
import torch
from timm.data import ImageNetInfo

import _repo  # the repository on sys.path: docs/measure/_repo.py
from basics.backbone_weights import packaged_file, to_timm_names
from basics.images import read_image


def main(folder: str) -> None:
    synsets = ImageNetInfo()
    network = timm.create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    source = torch.load(packaged_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    network.load_state_dict(to_timm_names(source, network.state_dict()))
    photos = [p for p in sorted(Path(folder).iterdir()) if re.match(r"n\d{8}_", p.name)]
    hits = 0
    for path in photos:
        image = torch.tensor(read_image(path)).permute(2, 0, 1).float()[None] / 255
        image = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False)
        with torch.no_grad():
            guess = network((image - 0.5) / 0.5).argmax().item()
        hits += synsets.index_to_label_name(guess) == path.name[:9]
    print(f"top-1 {hits}/{len(photos)} = {hits / len(photos):.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
