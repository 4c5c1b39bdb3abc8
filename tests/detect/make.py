"""Reference outputs for cnnc's detection code (tests/detect.rs reads detect.json).

torchvision's `box_iou` and `nms`, and pycocotools' COCOeval (AP at IoU 0.5 and over
0.5:0.95, area "all", at most 100 detections an image), on seeded random boxes. Run once with
PyTorch, torchvision and pycocotools installed (CI never installs PyTorch; the JSON is committed):

    python tests/detect/make.py
"""

import json
import os
import random

import numpy as np
import torch
import torchvision
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

rng = random.Random(7)


def box():
    x, y = rng.uniform(0, 80), rng.uniform(0, 80)
    return [x, y, x + rng.uniform(2, 40), y + rng.uniform(2, 40)]


# box_iou and nms on clustered boxes, so many overlap.
boxes = []
for _ in range(6):
    b = box()
    for _ in range(rng.randint(2, 8)):
        d = [rng.uniform(-6, 6) for _ in range(4)]
        boxes.append([b[0] + d[0], b[1] + d[1], max(b[0] + d[0] + 1, b[2] + d[2]), max(b[1] + d[1] + 1, b[3] + d[3])])
scores = [rng.random() for _ in boxes]
t = torch.tensor(boxes, dtype=torch.float32)
iou = torchvision.ops.box_iou(t, t).tolist()
nms = {str(th): torchvision.ops.nms(t, torch.tensor(scores), th).tolist() for th in (0.3, 0.5, 0.7)}

# COCO evaluation: 30 images, 3 classes; detections near the truth, jittered, some missed,
# some false.
W = H = 100
images, annotations, detections = [], [], []
for i in range(30):
    images.append({"id": i + 1, "width": W, "height": H})
    for _ in range(rng.randint(0, 4)):
        c = rng.randrange(3)
        x0, y0, x1, y1 = box()
        annotations.append(
            {"id": len(annotations) + 1, "image_id": i + 1, "category_id": c + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
             "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
        )
        if rng.random() < 0.85:
            j = [rng.gauss(0, 3) for _ in range(4)]
            cls = c if rng.random() < 0.9 else rng.randrange(3)
            detections.append({"image_id": i + 1, "category_id": cls + 1,
                               "bbox": [x0 + j[0], y0 + j[1], max(1.0, x1 - x0 + j[2]), max(1.0, y1 - y0 + j[3])],
                               "score": rng.random()})
    for _ in range(rng.randint(0, 2)):
        x0, y0, x1, y1 = box()
        detections.append({"image_id": i + 1, "category_id": rng.randrange(3) + 1,
                           "bbox": [x0, y0, x1 - x0, y1 - y0], "score": rng.random() * 0.6})
gt = COCO()
gt.dataset = {"images": images, "annotations": annotations,
              "categories": [{"id": c + 1, "name": str(c)} for c in range(3)]}
gt.createIndex()
dt = gt.loadRes(detections)
ev = COCOeval(gt, dt, "bbox")
ev.evaluate()
ev.accumulate()
ev.summarize()
out = {
    "boxes": boxes,
    "scores": scores,
    "iou": iou,
    "nms": nms,
    "coco": {
        "size": [W, H],
        "images": len(images),
        "truths": [[a["image_id"] - 1, a["category_id"] - 1] + a["bbox"] for a in annotations],
        "detections": [[d["image_id"] - 1, d["category_id"] - 1, d["score"]] + d["bbox"] for d in detections],
        "map50": float(ev.stats[1]),
        "map50_95": float(ev.stats[0]),
    },
    "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__},
}
with open(os.path.join(os.path.dirname(__file__), "detect.json"), "w") as f:
    json.dump(out, f)
print("map50", ev.stats[1], "map50_95", ev.stats[0])
