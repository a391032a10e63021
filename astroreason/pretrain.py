"""Short supervised pretrainings of a tiny Qwen-VL's input paths, on a surrogate set disjoint from the evaluation:
the vision tower for the image arm, the code-token embeddings for the token arm (each arm's warm start has its
counterpart in the other).

Why: a from-scratch tiny Qwen-VL memorises a few dozen images through the answer-token loss but does not generalise
within a CPU budget (issue 4). Its vision tower alone, with a linear head on the mean of its merged visual tokens,
learns surrogate morphology in a few hundred steps when trained with dihedral augmentation (a galaxy's class does
not change when it is rotated by 90 degrees or mirrored) and a warm-up + cosine learning rate. The head is thrown away;
the tower (patch embedding, blocks and the merger into the language model's width) is saved in a copy of the model,
from which SFT starts. The token arm's counterpart gives the model one token per code id (the `special` rendering)
and trains those tokens' embedding rows the same way: a linear head on the mean of a galaxy's code embeddings, head
thrown away. Without it the same tiny language model reading random code rows answers the majority class. The
pretraining data must be a separate surrogate file (another seed): its galaxies are not the galaxies of the split
that is evaluated, and the demo says so.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .arms import resize_image
from .data.galaxy10 import DECALS_CLASSES
from .data.reader import release_for_side
from .errors import UserError
from .io import atomic_path, sha256_file, write_json_atomic
from .models import check_image_size, family_for, load_model_and_processor

PRETRAIN_RECORD = "astroreason_vision_pretrain.json"


@dataclass
class VisionPretrainConfig:
    """Vision-tower pretraining.

    Args:
        steps: Optimiser steps.
        batch_size: Images per step.
        lr: Peak learning rate (linear warm-up over 10 % of the steps, then cosine decay).
        weight_decay: AdamW weight decay.
        image_size: Side in pixels the images are resized to (as the SFT and evaluation resize them).
        held_out: Fraction of the pretraining file kept aside to report the tower's own accuracy.
        seed: Seed of the head, the batches and the augmentation.
    """

    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    image_size: int = 112
    held_out: float = 0.1
    seed: int = 0


def _held_out_split(labels: np.ndarray, config, where: str) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """(held-out, training) positions of a seeded permutation, and the generator for the batches. The same seed
    and number of galaxies give the same split in both pretrainings: the tower and the code rows see the same
    galaxies."""
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(labels))
    n_held = int(round(config.held_out * len(labels)))
    held, train = order[:n_held], order[n_held:]
    if len(train) < config.batch_size:
        raise UserError(f"{where}: {len(train)} training galaxies, fewer than one batch of {config.batch_size}")
    return held, train, rng


def _warmup_cosine(optimizer, steps: int):
    """Linear warm-up over 10 % of the steps, then cosine decay to 0."""
    import torch

    warm = max(1, steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * max(0, s - warm) / max(1, steps - warm)))),
    )


def _held_out_record(predicted: np.ndarray, labels: np.ndarray, held: np.ndarray, train: np.ndarray) -> dict:
    """The record's counts and the pretraining's own held-out accuracy beside the held-out majority rate."""
    return {
        "n_train": int(len(train)),
        "n_held_out": int(len(held)),
        "held_out_accuracy": float(np.mean(predicted == labels[held])) if len(held) else None,
        "held_out_majority_rate": float(np.bincount(labels[held]).max() / len(held)) if len(held) else None,
    }


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The images, labels and class names (its release's, by label) of a Galaxy10-schema file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            images = f["images"][:]
            return images, f["ans"][:].astype(np.int64), release_for_side(images.shape[1]).classes
    except (OSError, KeyError) as err:
        raise UserError(f"{path}: not a Galaxy10-schema HDF5 file ({err})") from None


def _dihedral(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image rotated by a random multiple of 90 degrees and mirrored half of the time (N, H, W, C)."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        image = np.rot90(image, int(rng.integers(4)))
        out[i] = image[:, ::-1] if rng.random() < 0.5 else image
    return out


def _resized(images: np.ndarray, size: int) -> np.ndarray:
    """RGB images resized as the training datasets resize them (`arms.resize_image`, bicubic)."""
    from PIL import Image

    if images.shape[1:3] == (size, size):
        return images
    return np.stack([np.asarray(resize_image(Image.fromarray(im), size)) for im in images])


class _Tower:
    """The model's vision tower and a linear head on the mean of its merged visual tokens."""

    def __init__(self, model, processor, num_classes: int, seed: int):
        import torch

        self.model, self.processor = model, processor
        self.family = family_for(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = torch.nn.Linear(model.config.text_config.hidden_size, num_classes)

    def parameters(self):
        return self.family.vision_parameters(self.model) + list(self.head.parameters())

    def logits(self, images: np.ndarray):
        import torch
        from PIL import Image

        pil = [Image.fromarray(np.ascontiguousarray(im)) for im in images]
        batch = self.processor.image_processor(images=pil, return_tensors="pt")
        pooled = self.family.image_features(self.model, batch)
        return self.head(torch.stack([tokens.mean(0) for tokens in pooled]))


def pretrain_vision_tower(
    model_dir: str | Path,
    data_h5: str | Path,
    out_dir: str | Path,
    config: VisionPretrainConfig | None = None,
    *,
    progress: bool = True,
) -> dict:
    """Pretrain the vision tower of the model in `model_dir` on the labelled images of `data_h5`; save the whole model
    (tower updated, language model untouched) and its processor in `out_dir`. Returns the record also saved there."""
    import torch

    config = config or VisionPretrainConfig()
    if config.steps < 1 or config.batch_size < 1:
        raise UserError(f"pretrain: steps and batch_size must be >= 1, got {config.steps} and {config.batch_size}")
    check_image_size(model_dir, config.image_size, "pretrain image_size")  # the size the model's grid fits
    data_h5, out_dir = Path(data_h5), Path(out_dir)
    images, labels, classes = _read_h5(data_h5)
    images = _resized(images, config.image_size)  # once, not per batch: the augmentation commutes with it
    held, train, rng = _held_out_split(labels, config, str(data_h5))

    model, processor = load_model_and_processor(model_dir, dtype="float32")
    model.train()
    tower = _Tower(model, processor, len(classes), config.seed)
    params = tower.parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = _warmup_cosine(optimizer, config.steps)
    targets = torch.as_tensor(labels)

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    started, losses = time.monotonic(), []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("pretrain vision tower", total=config.steps, loss="-")
        for _ in range(config.steps):
            batch = train[rng.integers(0, len(train), config.batch_size)]
            loss = torch.nn.functional.cross_entropy(tower.logits(_dihedral(images[batch], rng)), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(task, advance=1, loss=f"{np.mean(losses[-20:]):.3f}")

    model.eval()
    with torch.no_grad():
        predicted = (
            np.concatenate(
                [tower.logits(images[held[i : i + 256]]).argmax(-1).numpy() for i in range(0, len(held), 256)]
            )
            if len(held)
            else np.empty(0, np.int64)
        )
    record = {
        "what": "vision tower pretrained with a linear head (discarded) on a surrogate file disjoint from evaluation",
        "source_h5": str(data_h5),
        "source_sha256": sha256_file(data_h5),
        **_held_out_record(predicted, labels, held, train),
        "final_loss": float(np.mean(losses[-20:])),
        "seconds": round(time.monotonic() - started, 1),
        "config": asdict(config),
        "base_model": str(model_dir),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        base_record = Path(model_dir) / "astroreason_tiny.json"
        if base_record.is_file():
            (tmp / base_record.name).write_bytes(base_record.read_bytes())
        write_json_atomic(tmp / PRETRAIN_RECORD, record)
    return record


# --- the token arm's counterpart: the code-token embeddings ----------------------------------------------------------

CODE_PRETRAIN_RECORD = "astroreason_code_pretrain.json"


@dataclass
class CodePretrainConfig:
    """Code-embedding pretraining: the token arm's counterpart of the vision tower's.

    Args:
        steps: Optimiser steps.
        batch_size: Galaxies per step.
        lr: Peak learning rate (linear warm-up over 10 % of the steps, then cosine decay).
        weight_decay: AdamW weight decay.
        held_out: Fraction of the pretraining galaxies kept aside to report the embeddings' own accuracy.
        match_norm: Rescale the trained rows to the mean norm of the vocabulary's other rows (the head is thrown
            away: the rows' directions carry what was learnt, and a code then weighs in the residual stream as much as
            a word of the prompt).
        seed: Seed of the head and the batches.
    """

    steps: int = 2000
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 0.01
    held_out: float = 0.1
    match_norm: bool = True
    seed: int = 0


def pretrain_code_embeddings(
    model_dir: str | Path,
    codes: np.ndarray,
    labels: np.ndarray,
    vocab_size: int,
    out_dir: str | Path,
    config: CodePretrainConfig | None = None,
    *,
    source: str = "",
    classes=DECALS_CLASSES,
) -> dict:
    """Give the model one token per code id (the `special` rendering) and pretrain those tokens' embedding rows on
    labelled code grids `codes` [N, H', W'] (from a file disjoint from the evaluation), with a linear head on the mean
    of a galaxy's code embeddings: what the vision tower's pretraining does with the mean of its visual tokens. The
    head is thrown away; every other parameter (the rest of the vocabulary included) is left as it was. Saves the
    model and its processor (with the code tokens) in `out_dir`; returns the record also saved there. `classes` are
    the labels' class names (the head has one output per class)."""
    import torch

    # lazy: the tokens layer's rendering names the code tokens; loading it here keeps `pretrain` light to import
    from .tokens.render import code_token_ids

    config = config or CodePretrainConfig()
    if config.steps < 1 or config.batch_size < 1:
        raise UserError(f"pretrain: steps and batch_size must be >= 1, got {config.steps} and {config.batch_size}")
    codes = np.asarray(codes, np.int64).reshape(len(codes), -1)
    labels = np.asarray(labels, np.int64)
    if len(codes) != len(labels) or codes.min() < 0 or codes.max() >= vocab_size:
        raise UserError(
            f"pretrain codes: {len(codes)} grids for {len(labels)} labels, ids must lie in 0-{vocab_size - 1}"
        )
    held, train, rng = _held_out_split(labels, config, "pretrain codes")

    model, processor = load_model_and_processor(model_dir, dtype="float32")
    family_for(model).add_code_tokens(processor, model, vocab_size)
    ids = torch.as_tensor(code_token_ids(processor, vocab_size))
    embeddings = model.get_input_embeddings().weight
    others = torch.ones(len(embeddings), dtype=torch.bool)
    others[ids] = False
    rows = torch.nn.Parameter(embeddings.detach()[ids].clone())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = torch.nn.Linear(rows.shape[1], len(classes))
    optimizer = torch.optim.AdamW([rows, *head.parameters()], lr=config.lr, weight_decay=config.weight_decay)
    schedule = _warmup_cosine(optimizer, config.steps)
    grids, targets = torch.as_tensor(codes), torch.as_tensor(labels)

    def logits(index):
        return head(rows[grids[index]].mean(1))

    started, losses = time.monotonic(), []
    for _ in range(config.steps):
        batch = torch.as_tensor(train[rng.integers(0, len(train), config.batch_size)])
        loss = torch.nn.functional.cross_entropy(logits(batch), targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    with torch.no_grad():
        predicted = logits(torch.as_tensor(held)).argmax(-1).numpy() if len(held) else np.empty(0, np.int64)
        if config.match_norm:
            rows.mul_(embeddings[others].norm(dim=1).mean() / rows.norm(dim=1).mean())
        embeddings[ids] = rows.detach()
    record = {
        "what": "code-token embeddings pretrained with a linear head (discarded) on code grids of a file disjoint "
        "from evaluation",
        "source": source,
        "vocab_size": int(vocab_size),
        **_held_out_record(predicted, labels, held, train),
        "final_loss": float(np.mean(losses[-20:])),
        "seconds": round(time.monotonic() - started, 1),
        "config": asdict(config),
        "base_model": str(model_dir),
    }
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        for name in ("astroreason_tiny.json", PRETRAIN_RECORD):
            if (Path(model_dir) / name).is_file():
                (tmp / name).write_bytes((Path(model_dir) / name).read_bytes())
        write_json_atomic(tmp / CODE_PRETRAIN_RECORD, record)
    return record


def pretrain_code_embeddings_on_file(
    model_dir: str | Path,
    data_h5: str | Path,
    codec_dir: str | Path,
    out_dir: str | Path,
    config: CodePretrainConfig | None = None,
) -> dict:
    """`pretrain_code_embeddings` on every galaxy of a labelled Galaxy10-schema file, encoded by the codec saved in
    `codec_dir`: the token arm's warm start, as the vision tower's is `pretrain_vision_tower` on such a file."""
    import h5py

    # lazy: the tokens layer's codec; loading it here keeps `pretrain` light to import
    from .tokens import load_codec
    from .tokens.codec import read_inputs

    codec = load_codec(codec_dir)
    with h5py.File(data_h5, "r") as f:
        labels = f["ans"][()].astype(np.int64)
        classes = release_for_side(f["images"].shape[1]).classes
    codes = codec.encode_batches(read_inputs(data_h5, np.arange(len(labels)), codec.input_spec), total=len(labels))
    source = f"{data_h5} encoded by {codec_dir}"
    return pretrain_code_embeddings(
        model_dir, codes, labels, codec.vocab_size, out_dir, config, source=source, classes=classes
    )
