"""Training-step speed of the default detector on one batch of training scenes: as built (stem and
first two stages of the Lite0 body kept as trained) against the whole body trained, at two sizes.

    python docs/measure/detector_step.py data/dogflw_mini/annotations/train.json $DOGFLW_MINI
"""
import sys
import time

import torch

import _repo  # the repository on sys.path: docs/measure/_repo.py
from detector.model import create_detector
from detector.scenes import FaceBoxes, SceneAugmentation, collate_images

STEPS = 4  # the first is a warm-up and is not counted


def main(ann_file: str, data_root: str) -> None:
    torch.manual_seed(0)
    scenes = FaceBoxes(ann_file, data_root, SceneAugmentation(), seed=0)
    batch = collate_images([scenes[(i, 0)] for i in range(8)])
    for min_size, max_size in ((320, 416), (256, 320)):
        for whole_body in (True, False):
            model = create_detector("fcos_lite0_fpn", True, min_size, max_size).train()
            if whole_body:
                model.backbone.body.requires_grad_(True)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
            times = []
            for _ in range(STEPS):
                start = time.perf_counter()
                loss = sum(model(batch["images"], batch["targets"]).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                times.append(time.perf_counter() - start)
            rate = len(batch["images"]) * (STEPS - 1) / sum(times[1:])
            print(f"{min_size}/{max_size} px, {'whole body trained' if whole_body else 'as built'}: "
                  f"{rate:.1f} images/s", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
