"""Real held-out faces for the quality report: two sets of photos of 'val' people (``train.data.person_split``),
with disjoint people, each face detected (the centred subject) and aligned to ArcFace-112 and FFHQ crops."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...align import align_arcface, align_ffhq, pick_face
from ...errors import FaceAnonyMixerError
from ...images import read_image
from ...tensors import from_uint8
from ...train.data import list_people


@dataclass
class RealSet:
    name: str
    people: list[str]
    files: list[str] = field(default_factory=list)        # relative to the data root, faces found
    arc: list[np.ndarray] = field(default_factory=list)   # ArcFace 112 crops
    ffhq: list[np.ndarray] = field(default_factory=list)  # FFHQ-aligned crops at the generator resolution
    lm5: list[np.ndarray] = field(default_factory=list)   # [5,2] landmarks of the face in its photo
    person: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def info(self) -> dict:
        return dict(n_people=len(set(self.person)), n_people_available=len(self.people), n_images=len(self.files),
                    n_no_face=len(self.failed), files=self.files,
                    failed=[dict(file=f, error=e[:200]) for f, e in self.failed])

    def ffhq_tensor(self) -> torch.Tensor:
        if not self.ffhq:
            return torch.zeros(0, 3, 1, 1)
        return from_uint8(np.stack(self.ffhq))


def _round_robin(people: dict[str, list[Path]], names: list[str]) -> list[tuple[str, Path]]:
    """First image of every person, then every second image, ...: as many identities as possible first."""
    out, k = [], 0
    while True:
        added = False
        for p in names:
            if k < len(people[p]):
                out.append((p, people[p][k]))
                added = True
        if not added:
            return out
        k += 1


def load_real_sets(root: Path, n: int, seed: int, resolution: int) -> tuple[RealSet, RealSet, dict]:
    """Two real sets of up to ``n`` faces each from the held-out ('val') people, with disjoint people
    (shuffled with ``seed``, alternately assigned to A and B); images without a face are skipped and listed."""
    people = list_people(root, "val")
    names = sorted(people)
    random.Random(seed).shuffle(names)
    sets = (RealSet("A", names[0::2]), RealSet("B", names[1::2]))
    for s in sets:
        for person, f in _round_robin(people, s.people):
            if len(s.files) >= n:
                break
            rel = str(f.relative_to(root))
            try:
                img = read_image(f)
                face, _ = pick_face(img, source=str(f), select="center")  # LFW: the centred subject
                s.arc.append(align_arcface(img, face.landmarks5))
                s.ffhq.append(align_ffhq(img, face.landmarks5, resolution))
                s.lm5.append(np.asarray(face.landmarks5, np.float64))
            except FaceAnonyMixerError as e:
                s.failed.append((rel, str(e).splitlines()[0]))
                continue
            s.files.append(rel)
            s.person.append(person)
    n_train = sum(1 for d in Path(root).iterdir() if d.is_dir()) - len(people)
    info = dict(root=str(root), split="val", n_val_people=len(people),
                n_val_images=sum(len(v) for v in people.values()), n_other_people_ignored=n_train,
                selection=f"val people shuffled with seed {seed}, alternately to A/B (disjoint people); "
                          "images taken round-robin over people (one per person first); face = the detection "
                          "containing the image centre (align.select_face 'center')")
    return sets[0], sets[1], info
