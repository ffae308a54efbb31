"""Scene sets scored after every training epoch, beside validation mIoU: the share of person pixels called
pet on photos with person masks, of pixels called pet on photos without an animal, and animal IoU on YOLO
segmentation sets. The functions are eval's (edgeseg.evaluation), run on the model being trained at
each photo's original resolution, so an epoch's figures are the ones `edgeseg eval` gives its checkpoint.

Validation mIoU on held-out pet photos cannot see a model that starts painting people; these can. The best
epoch is still chosen by validation mIoU: these figures are reported and recorded with each epoch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from edgeseg.compile.reference import TorchBackend
from edgeseg.errors import EdgesegError
from edgeseg.evaluation import scenes
from edgeseg.evaluation.evaluate import animal_free
from edgeseg.evaluation.yolo_data import YoloSet, load_yolo_set
from edgeseg.runtime.backends.predictor import Predictor
from edgeseg.runtime.images import images_in
from edgeseg.runtime.meta import ModelMeta
from edgeseg.training.recipe import TrainConfig


@dataclass
class SceneChecks:
    people: list[tuple[Path, Path]]
    people_name: str
    no_animal: list[tuple[Path, list[Path]]]
    yolo: list[tuple[YoloSet, list[int], int | None]]  # each set with its animal class ids and person class

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> SceneChecks | None:
        """The sets ``cfg`` names, read (and refused, naming the folder) before training starts; None without any."""
        if cfg.val_numbered and not cfg.val_people:
            raise EdgesegError("--val-numbered selects photos of --val-people: give that folder too")
        if cfg.yolo_split and not cfg.val_yolo:
            raise EdgesegError("--yolo-split selects the split of --val-yolo: give that set too")
        if not (cfg.val_people or cfg.val_no_animal or cfg.val_yolo):
            return None
        numbered = scenes.parse_range(cfg.val_numbered, "--val-numbered") if cfg.val_numbered else None
        people = scenes.person_pairs(Path(cfg.val_people), numbered) if cfg.val_people else []
        name = f"{Path(cfg.val_people).name} {cfg.val_numbered or ''}".strip() if cfg.val_people else ""
        free = [(Path(f), images_in(f, "--val-no-animal")) for f in cfg.val_no_animal]
        yolo = [load_yolo_set(Path(f), cfg.yolo_split) for f in cfg.val_yolo]  # refused now, not after an epoch
        return cls(people, name, free, [(s, s.class_ids(cfg.animal_classes, "--animal-classes"),
                                         s.person_id(cfg.person_class)) for s in yolo])

    def score(self, model: nn.Module, meta: ModelMeta, device: str) -> list[dict]:
        """One row per set: its kind, folder name and figures (shares and IoU in 0..1)."""
        model.eval()
        p = Predictor(TorchBackend(model, meta, device), None)
        rows = []
        if self.people:
            (r,) = scenes.score_people([p], self.people)
            rows.append({"set": "people", "folder": self.people_name,
                         **_plain(r, "person_pixels_called_pet", "all_pixels_called_pet")})
        for folder, photos in self.no_animal:
            (r,) = animal_free([p], photos)
            rows.append({"set": "no_animal", "folder": folder.name, **_plain(r, "pet_share")})
        for data, animals, person in self.yolo:
            (r,) = scenes.score_yolo([p], data, animals, person)
            name = data.source.name + (f" ({data.split})" if data.split else "")
            rows.append({"set": "yolo", "folder": name, **_plain(
                r, "with_animal", "animal_iou_mean", "missed", "pet_share_without_animal", "person_pixels_called_pet")})
        return rows


def _plain(figures: dict, *keys: str) -> dict:
    """Python numbers (None stays): a checkpoint's history loads with torch.load(weights_only=True), which
    refuses NumPy scalars."""
    return {k: None if figures[k] is None else int(figures[k]) if k in ("with_animal", "missed")
            else float(figures[k]) for k in keys}

