"""A uniform model soup (Wortsman et al., 2022): the mean of the weights of checkpoints fine-tuned from
one parent. It can be more accurate than each ingredient and is not always (Wortsman et al. keep only
the ingredients that help, a "greedy" soup; here SZG validated over Z and under ZG, model card); it costs
no training and nothing at run time.

BatchNorm's running statistics are averaged like the weights (a soup of models that share a parent has
statistics close to each of theirs); measure the result with ``edgeseg eval`` before keeping it. The soup
records each ingredient's file, hash and training record, as ``train --init`` records its parent.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from edgeseg import __version__
from edgeseg.compile.checkpoint import load_checkpoint, save_checkpoint
from edgeseg.errors import EdgesegError
from edgeseg.files import check_writable
from edgeseg.training.train import training_record


def soup(paths: Sequence[str | Path], out: str | Path, force: bool = False,
         weights: Sequence[float] | None = None) -> dict:
    """Average ``paths`` (at least two checkpoints of one architecture, input size and classes) into
    ``out`` (the first one's metadata, its provenance naming the soup; each ingredient's provenance and
    training record are kept under ``soup_of``); returns the output's path and the ingredients' file names.
    ``weights``, one per checkpoint, makes it a weighted mean (scaled to sum to 1; recorded with each
    ingredient): the interpolation between a stage and its parent that the uniform soup is the middle of."""
    if len(paths) < 2:
        raise EdgesegError("a soup needs at least two checkpoints (fine-tuned from one parent)")
    if weights is None:
        weights = [1.0] * len(paths)
    if len(weights) != len(paths) or not all(math.isfinite(w) and w > 0 for w in weights):
        raise EdgesegError(f"--weights: give {len(paths)} positive numbers, one per checkpoint in their order "
                           f"(got {', '.join(map(str, weights))})")
    share = [w / sum(weights) for w in weights]
    out = check_writable(out, force=force)  # refused before any checkpoint is read
    loaded = [load_checkpoint(p) for p in paths]
    first = loaded[0]
    for c in loaded[1:]:
        if c.meta != first.meta:
            raise EdgesegError(f"is {c.meta.arch} k={c.meta.kernel_size} at {c.meta.input_size} with classes "
                               f"{', '.join(c.meta.class_names)}, unlike {first.path.name}: a soup averages "
                               "checkpoints of one model", c.path)
    states = [c.model.state_dict() for c in loaded]
    for i, state in enumerate(states):  # the same weights twice (a copy, a re-save) would weigh them double
        if twin := next((loaded[j] for j in range(i) if all(torch.equal(v, states[j][k]) for k, v in state.items())),
                        None):
            raise EdgesegError(f"the same weights as {twin.path.name}: give each checkpoint once", loaded[i].path)
    uniform = len(set(share)) == 1

    def mixed(k: str) -> torch.Tensor:  # the uniform soup as it always was: the mean, bit for bit
        if uniform:
            return torch.stack([s[k] for s in states]).mean(0)
        return sum(w * s[k] for w, s in zip(share, states, strict=True))

    # num_batches_tracked: the first's (eval mode does not read it)
    first.model.load_state_dict({k: mixed(k) if v.is_floating_point() else v for k, v in states[0].items()})
    ingredients = [{"file": c.path.name, "sha256": c.sha256, "provenance": c.meta.provenance,
                    **({} if uniform else {"weight": w}), **training_record(c.extra)}
                   for c, w in zip(loaded, share, strict=True)]
    meta = dataclasses.replace(first.meta, provenance={"made_with": f"edgeseg {__version__} soup",
                                                       "ingredients": [c.path.name for c in loaded],
                                                       **({} if uniform else {"weights": share})})
    written = save_checkpoint(out, first.model, meta, {"soup_of": ingredients}, force=force)
    return {"out": str(written), "ingredients": [c.path.name for c in loaded], "weights": share}
