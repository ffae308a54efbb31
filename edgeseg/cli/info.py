"""edgeseg info: what a checkpoint, ONNX file or engine is, and how it was trained."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeseg.cli.common import kv_table, parse_size, print_json, print_table


def info(
    path: Annotated[Path, typer.Argument(help=(
        "Checkpoint (.pth/.pt), ONNX model or engine; or a training run's NAME.last.pth: how far it got."))],
    size: Annotated[str | None, typer.Option(help="Input HxW for the MAC count (default: the model's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Describe a model: architecture, parameters, MACs, classes, preprocessing, provenance."""
    from edgeseg.info import describe

    d = describe(path, parse_size(size) if size else None)
    if as_json:
        print_json(d)
        return
    rows: list[tuple[str, object]] = [
        ("file", f"{d['path']} ({d['file_bytes'] / 1e6:.2f} MB)"),
        ("sha256", d["sha256"]),
    ]
    if d["kind"] == "checkpoint":
        meta = d["meta"]
        rows += [
            ("stored as", d["stored_as"]),
            ("arch", f"{d['arch']} (kernel size {d['kernel_size']})"),
            ("parameters", f"{d['parameters']:,}"),
            ("conv MACs", f"{d['macs']:,} at {d['macs_at'][0]}x{d['macs_at'][1]} ({d['macs'] / 1e9:.3f} GMAC)"),
            ("classes", ", ".join(f"{i} {n}" for i, n in enumerate(d["classes"]))),
            ("input", f"{meta['color']} {meta['layout']} {meta['input_size'][0]}x{meta['input_size'][1]}, "
                      f"values {meta['value_range'][0]:g}..{meta['value_range'][1]:g}, "
                      f"resize {meta['interpolation']}"),
        ]
        rows += [(f"provenance.{k}", v) for k, v in meta.get("provenance", {}).items()]
        rows += _record_rows(d["extra"])
    elif d["kind"] == "training_state":
        kept = f"; the best epoch's model is {d['kept']}" if d["kept"] else ""
        rows.append(("stored as", f"a training state of edgeseg train: train --resume {path} continues the run{kept}"))
        rows += _record_rows(d["extra"]) + _progress_rows(d["extra"].get("history"), d["time_left"])
    elif d["kind"] == "engine":
        rows += [(k, v) for k, v in d.items() if k not in ("path", "kind", "file_bytes", "sha256", "model_meta")]
    else:
        from edgeseg.compile.onnx_info import onnx_rows

        rows += onnx_rows(d)
    print_table(kv_table(f"edgeseg info: {path.name}", rows))


def best_epoch(best: dict) -> str:
    """"26", or "mean of epochs 21-30" when weight averaging won."""
    span = best.get("averaged")
    return f"mean of epochs {span[0]}-{span[1]}" if span else str(best.get("epoch"))


def scene_summary(rows: list[dict]) -> str:
    """Scene figures of an epoch (edgeseg.training.scene_checks) in one line, as train and info print them."""
    parts = []
    for r in rows:
        if r["set"] == "people":
            parts.append(f"{r['folder']}: {100 * r['person_pixels_called_pet']:.2f}% of person px called pet")
        elif r["set"] == "no_animal":
            parts.append(f"{r['folder']}: {100 * r['pet_share']:.2f}% called pet")
        else:
            found = [f"animal IoU {r['animal_iou_mean']:.3f} ({r['missed']}/{r['with_animal']} missed)"
                     if r["with_animal"] else "",
                     f"{100 * r['pet_share_without_animal']:.2f}% called pet without animal"
                     if r["pet_share_without_animal"] is not None else ""]
            parts.append(f"{r['folder']}: " + ", ".join(f for f in found if f))
    return "; ".join(parts)


def _recipe_rows(recipe: dict) -> list[tuple[str, object]]:
    """Augmentation and the loss's data in a line each (keys an older record lacks are left out)."""
    g = recipe.get
    aug = ["flip"]
    if g("jitter"):
        aug.append(f"colour jitter {g('jitter')}")
    if g("scale_aug") is not None:
        zoom = "whole frames" if g("scale_aug") >= 1 else f"zoom-in crops to {g('scale_aug')} of the side"
        aug.append(zoom + (f", zoom-out to 1/{g('zoom_out')}" if (g("zoom_out") or 1) > 1 else ""))
    if g("rotate"):
        aug.append(f"rotation within {g('rotate'):g} degrees")
    shares = (("blur", "blur"), ("gray", "grey"), ("dark", "dimmed"))
    aug += [f"{label} on {g(k):.0%} of samples" for k, label in shares if g(k)]
    data = [f"cross-entropy, border class x{g('border_weight', 1)}"]
    if g("lovasz"):
        data.append(f"Lovasz x{g('lovasz')}")
    if g("negatives"):
        folders = g("no_animal")  # recorded as file names, joined by ", " when several
        extra = f" and {'folders' if ', ' in folders else 'folder'} {folders}" if folders else ""
        data.append(f"'no animal' {g('negatives'):.0%} of draws (background crops{extra})")
    if g("yolo_data"):
        animals = ", ".join(str(c) for c in g("animal_classes") or ())
        data.append(f"YOLO sets {g('yolo_data')} (animal classes {animals})")
    if g("balance") not in (None, "none"):
        data.append(f"balanced by {g('balance')}")
    return [("augmentation", ", ".join(aug)), ("loss and data", "; ".join(data))]


def _progress_rows(history: object, left: dict | None) -> list[tuple[str, object]]:
    """A run in progress: its last epoch (often not the best one) and the time the rest will take."""
    rows: list[tuple[str, object]] = []
    try:
        last = history[-1]  # type: ignore[index]
        scenes = f"; {scene_summary(last['scenes'])}" if last.get("scenes") else ""
        rows.append(("last epoch", f"{last['epoch']}: validation mIoU {last['val_miou']:.4f}{scenes}"))
    except (AttributeError, TypeError, KeyError, IndexError, ValueError):  # an odd record: its keys show it
        pass
    if left and left["epochs"] > 0:
        took = left["seconds"]
        about = f"{took / 3600:.1f} h" if took >= 3600 else f"{took / 60:.0f} min"
        rows.append(("time left", f"{left['epochs']} epochs, about {about} at the median "
                                  f"{left['median_epoch_seconds']:.0f} s per epoch so far (on the machines they "
                                  "ran on)"))
    return rows


def _record_rows(extra: dict) -> list[tuple[str, object]]:
    """The training record's rows; a record edgeseg did not write (or a damaged one) as its keys and values."""
    try:
        return _training_rows(extra)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError):
        return [(k, _short(v)) for k, v in extra.items()]


def _training_rows(extra: dict) -> list[tuple[str, object]]:
    """A training record in a few lines (the recipe, how far it ran, the best epoch); other keys as
    they are when short. The whole record is in ``info --json``."""
    rows: list[tuple[str, object]] = []
    recipe, history, best = extra.get("recipe") or {}, extra.get("history") or [], extra.get("best") or {}
    if recipe:
        if recipe.get("schedule") == "cosine":
            schedule = ", cosine down to lr/100"
        else:
            schedule = (f", StepLR every {recipe['step_size']} epochs x{recipe['gamma']}"
                        if recipe.get("step_size") else ", constant LR")
        shuffle = f", shuffle seed {recipe['shuffle_seed']}" if recipe.get("shuffle_seed") is not None else ""
        rows.append(("training", f"batch {recipe.get('batch')}, lr {recipe.get('lr')}{schedule}, "
                                 f"{recipe.get('size', ['?'])[0]}px, seed {recipe.get('seed')}{shuffle}"))
        rows += _recipe_rows(recipe)
    if history or "epochs_run" in extra:
        planned = f" of {recipe['epochs']} planned" if recipe.get("epochs") else ""
        rows.append(("epochs run", f"{extra.get('epochs_run', len(history))}{planned} "
                                   f"({len(history)} in the history; info --json for every epoch)"))
    if best:
        rows.append(("best epoch", f"{best_epoch(best)}: validation mIoU {best.get('miou', float('nan')):.4f}, "
                                   f"pixel accuracy {best.get('pixel_accuracy', float('nan')):.4f}"))
    scenes = next((h.get("scenes") for h in history if h.get("epoch") == best.get("epoch")), None)
    if scenes and not best.get("averaged"):
        rows.append(("best epoch on scenes", scene_summary(scenes)))
    avg = extra.get("average")
    if avg:
        kept = "kept" if best.get("averaged") else "not kept: the best epoch validated higher"
        rows.append(("weight average", f"epochs {avg['epochs'][0]}-{avg['epochs'][1]}: validation mIoU "
                                       f"{avg['val_miou']:.4f} ({kept})"))
    if extra.get("init_from"):
        rows.append(("started from", _stage(extra["init_from"])))
    rows += [("soup of", _stage(part)) for part in extra.get("soup_of") or ()]
    for k, v in extra.items():
        if k not in ("recipe", "history", "best", "epochs_run", "init_from", "average", "soup_of"):
            rows.append((k, _short(v)))
    return rows


def _stage(part: dict) -> str:
    """A parent or a soup ingredient in one line: its file, hash and what it was."""
    if part.get("soup_of"):
        what = f"a soup of {', '.join(str(p.get('file')) for p in part['soup_of'])}"
    else:
        runs = f"{part['epochs_run']} epochs, " if "epochs_run" in part else ""
        what = f"{runs}best validation mIoU {(part.get('best') or {}).get('miou', float('nan')):.4f}"
    weight = f"weight {part['weight']:.3g}, " if "weight" in part else ""
    return f"{part.get('file')} ({weight}sha256 {str(part.get('sha256'))[:12]}, {what}; info --json for its record)"


def _short(value: object) -> object:
    """A value as it is when short; a long list or dict as its length (info --json has it whole)."""
    if isinstance(value, (list, dict)) and len(str(value)) >= 100:
        return f"{type(value).__name__} of {len(value)} (info --json)"
    return value

