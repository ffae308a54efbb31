"""The training recipe: every option of `edgeseg train`, with the defaults of the bundled model's first
stage (trained from scratch; models/README.md gives the two fine-tuning stages after it).

Kept apart from edgeseg.training.train (PyTorch) so that the CLI takes its defaults from here without importing
PyTorch: one truth for the code, the help and the model card (a test compares them with the bundled
checkpoint's stored recipe).
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("step", "cosine")


@dataclass
class TrainConfig:
    data: str | tuple[str, ...] = ()  # Oxford-layout folder(s); their trainval lines only
    arch: str = "segnet-dsc"
    kernel_size: int = 3
    # the bundled model's first stage (models/README.md): the notebook's batch 8 and Adam 1e-3,
    # halved every 15 epochs over 60, with zoom, rotation, blur, "no animal" crops and a heavier border
    epochs: int = 60
    batch: int = 8
    size: tuple[int, int] = (128, 128)
    lr: float = 1e-3
    schedule: str = "step"  # step: StepLR (step_size, gamma); cosine: from lr down to lr/100 over the epochs
    step_size: int = 15  # StepLR period in epochs; 0 = constant learning rate
    gamma: float = 0.5
    jitter: float = 0.2  # brightness/contrast/saturation jitter strength
    scale_aug: float = 0.6  # smallest random zoom-in crop (fraction of the side); 1.0 = off (the notebook's recipe)
    zoom_out: float = 1.0  # largest random zoom window (side, > 1: photo made smaller in a border); 1.0 = off
    val_fraction: float = 0.1  # held out of trainval for choosing the best epoch
    seed: int = 0  # the validation hold-out's, and the draws' unless shuffle_seed is set
    # the draws alone (a fresh network's weights, shuffling, augmentation): runs that differ only here, such as
    # the ingredients of a soup, keep one hold-out
    shuffle_seed: int | None = None
    interpolation: str = "area"  # how images are resized, recorded in the checkpoint's metadata
    limit: int = 0  # use only the first N trainval images (quick runs, tests); 0 = all
    extra_data: str | None = None  # photos + rough-masks/ (1 pet, 2 background) added to training only
    extra_band: int = 4  # pixels either side of a rough outline that the loss ignores
    # YOLO segmentation sets (folders or dataset YAMLs; their train split) added to training, never held out:
    # the animal_classes' polygons pet with a border band, the rest background
    yolo_data: tuple[str, ...] = ()
    device: str = "auto"
    balance: str = "none"  # draw each epoch so every breed (or species) gets the same share: none|breed|species
    # folder(s) of photos without animals, labelled background, drawn among the negatives
    no_animal: str | tuple[str, ...] | None = None
    negatives: float = 0.15  # share of each epoch's draws that are "no animal": background crops and no_animal photos
    border_weight: float = 1.5  # cross-entropy weight of the thin border class (pet and background: 1)
    average: int = 0  # also try the mean of the last N epochs' weights (BN refreshed), kept if it validates better
    lovasz: float = 0.0  # weight of the Lovasz-softmax (IoU) loss added to cross-entropy (training.losses); 0: off
    rotate: float = 10.0  # random rotation within +-degrees (0: off, the notebook's recipe)
    blur: float = 0.1  # share of samples given a random Gaussian blur (0: off)
    gray: float = 0.0  # share of samples turned grey (0: off)
    dark: float = 0.0  # share of samples dimmed as in a dim room at night, with sensor noise (0: off)
    cache: str | None = None  # .npz of the decoded training set: written when missing, read when present
    precision: str = "auto"  # fp32, bf16 (autocast), or auto: bf16 where the device computes it natively
    init: str | None = None  # start from this checkpoint's weights (fine-tuning) instead of a random init
    # scene sets scored after every epoch beside validation mIoU, as eval scores them (reported and recorded;
    # the best epoch is still the one with the best validation mIoU): photos with person masks (optionally
    # only those numbered in a range), folders of photos without animals, YOLO segmentation sets (folders or
    # dataset YAMLs)
    val_people: str | None = None
    val_numbered: str | None = None
    val_no_animal: tuple[str, ...] = ()
    val_yolo: tuple[str, ...] = ()
    yolo_split: str | None = None  # with val_yolo: the split scored (None: a YAML's val, a folder's every image)
    animal_classes: tuple[int | str, ...] = (15, 16)  # val_yolo's, yolo_data's animal ids or names (COCO: cat, dog)
    person_class: int | str | None = "person"  # with val_yolo: the people's class id or name (None: none)

    @property
    def folders(self) -> tuple[str, ...]:
        return (self.data,) if isinstance(self.data, str) else tuple(self.data)

    @property
    def no_animal_folders(self) -> tuple[str, ...]:
        return (self.no_animal,) if isinstance(self.no_animal, str) else tuple(self.no_animal or ())
