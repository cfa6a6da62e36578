"""Reference detections of the `nudenet` Python package, for easel's NudeNet parity test.

For every PNG in the fixture folder (scikit-image's sample photographs, copied in by
--copy-skimage, plus images easel's tiny test model generated), records what nudenet 3.4.2 does:

- `input_sha256`: SHA-256 of the padded, resized 8-bit image that `cv2.dnn.blobFromImage` makes,
  as interleaved RGB bytes (the script checks that the blob is exactly these bytes / 255, in the
  plane order B, G, R that nudenet feeds the model);
- `class_max`: the highest raw score of each class over all anchors;
- `detections`: `NudeDetector().detect(path)`, the package's own answer.

The Rust test (crates/diffusion/tests/nudenet_parity.rs) compares against this JSON without Python.

    infra/moderation/make-parity.sh            # venv + this script
"""
import argparse
import hashlib
import json
import os
import shutil
import sys

import cv2
import numpy as np
import onnxruntime
import nudenet
from nudenet import NudeDetector
from nudenet.nudenet import _read_image

SKIMAGE_IMAGES = ["astronaut.png", "camera.png", "chelsea.png", "color.png", "moon.png", "horse.png", "page.png"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", help="fixture folder of PNG images; the JSON is written beside them")
    parser.add_argument("--copy-skimage", action="store_true", help="copy scikit-image's sample images in first")
    args = parser.parse_args()

    if args.copy_skimage:
        import skimage

        data = os.path.join(os.path.dirname(skimage.__file__), "data")
        for name in SKIMAGE_IMAGES:
            shutil.copyfile(os.path.join(data, name), os.path.join(args.folder, name))

    model = os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx")
    detector = NudeDetector()
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    labels = getattr(nudenet.nudenet, "__labels")
    images = {}
    for name in sorted(os.listdir(args.folder)):
        if not name.endswith(".png"):
            continue
        path = os.path.join(args.folder, name)
        mat = cv2.imread(path)  # what nudenet reads: 8-bit BGR, alpha dropped, gray replicated
        height, width = mat.shape[:2]
        side = max(width, height)
        padded = cv2.copyMakeBorder(mat, 0, side - height, 0, side - width, cv2.BORDER_CONSTANT)
        resized = padded if side == 320 else cv2.resize(padded, (320, 320), interpolation=cv2.INTER_LINEAR)
        rgb = np.ascontiguousarray(resized[..., ::-1])
        blob = _read_image(path, 320)[0]
        planes = np.rint(blob[0] * 255).astype(np.uint8)
        if not np.array_equal(planes, resized.transpose(2, 0, 1)):
            sys.exit(f"{name}: blobFromImage's input is not cv2.resize's output in B, G, R planes")
        raw = session.run(None, {"images": blob})[0][0]
        class_max = {label: float(raw[4 + k].max()) for k, label in enumerate(labels)}
        images[name] = {
            "width": width,
            "height": height,
            "input_sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
            "class_max": class_max,
            "detections": detector.detect(path),
        }
        found = ", ".join(f"{d['class']} {d['score']:.3f} {d['box']}" for d in images[name]["detections"]) or "none"
        print(f"{name} ({width}x{height}): {found}")
    reference = {
        "produced_by": "infra/moderation/make_parity.py",
        "nudenet": nudenet.__version__ if hasattr(nudenet, "__version__") else "3.4.2",
        "opencv": cv2.__version__,
        "onnxruntime": onnxruntime.__version__,
        "images": images,
    }
    with open(os.path.join(args.folder, "nudenet-reference.json"), "w") as out:
        json.dump(reference, out, indent=1, sort_keys=True)
        out.write("\n")


if __name__ == "__main__":
    main()
