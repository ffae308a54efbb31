"""Training losses beyond cross-entropy: the Lovasz-softmax surrogate of the Jaccard index (IoU).

Cross-entropy scores every pixel alike, so the thin border class (a few percent of the pixels, the lowest
IoU of the three) weighs little in it, while mIoU weighs it a third. The Lovasz-softmax loss (Berman,
Rannen Triki and Blaschko, "The Lovasz-Softmax loss", CVPR 2018) is the convex extension of 1 - IoU per
class: minimising it tunes the very ratio the benchmark reports. Its authors fine-tune with it after
cross-entropy; edgeseg adds it to cross-entropy with a weight (``edgeseg train --lovasz W``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from edgeseg.evaluation.datasets import IGNORE


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Jaccard loss's Lovasz extension at pixels sorted by decreasing error."""
    total = fg_sorted.sum()
    intersection = total - fg_sorted.cumsum(0)
    union = total + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


def lovasz_softmax(scores: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Lovasz-softmax over all pixels of the batch (the benchmark's IoU also pools its pixels), averaged over
    the classes present in ``target``. ``scores``: N x C x H x W logits; ``target``: N x H x W class ids, with
    ``ignore_index`` where the loss must not look."""
    classes = scores.shape[1]
    probs = scores.float().softmax(1).permute(0, 2, 3, 1).reshape(-1, classes)
    labels = target.reshape(-1)
    keep = labels != ignore_index
    probs, labels = probs[keep], labels[keep]
    losses = []
    for c in range(classes):
        fg = (labels == c).float()
        if not fg.any():  # an absent class has no IoU to improve; its false positives cost the present ones
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[order])))
    if not losses:
        return scores.sum() * 0.0
    return torch.stack(losses).mean()


def training_loss(border_weight: float, lovasz: float, device: torch.device
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """edgeseg train's loss of a batch's scores: cross-entropy with the border class weighted (computed in FP32
    whatever the step's autocast), plus ``lovasz`` times the Lovasz-softmax loss; IGNORE pixels left out."""
    ce = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 1.0, border_weight], device=device), ignore_index=IGNORE)

    def loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        value = ce(scores.float(), labels)
        return value + lovasz * lovasz_softmax(scores, labels, IGNORE) if lovasz else value

    return loss
