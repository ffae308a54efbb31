"""Training on a workstation (or a GPU machine): the training photos and their cache (trainset),
animal-free composites, augmentation, losses, the recipe of the bundled model, and the epoch loop
that writes checkpoints with their whole history (train). Needs PyTorch; uses the compile side's
model and checkpoints and the evaluation metrics; nothing below it imports it."""
