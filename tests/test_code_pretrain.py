"""The token arm's warm start: code-token embeddings pretrained on labelled code grids, nothing else moved.

The grids are built so that the class is in which codes a galaxy uses (each class draws most of its codes from its own
band of ids), as a codec's codes carry a galaxy's morphology; the pretrained rows must then tell the classes apart on
held-out grids, and every other parameter of the model, the rest of the vocabulary included, must be untouched.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from astroreason.errors import UserError
from astroreason.models import load_model_and_processor
from astroreason.pretrain import CODE_PRETRAIN_RECORD, CodePretrainConfig, pretrain_code_embeddings
from astroreason.tokens.render import code_token

VOCAB = 40  # codes
CLASSES = 10


def class_coded_grids(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n 4x4 grids: 60 % of a galaxy's cells from its class's band of 4 ids, the rest uniform noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    own = labels[:, None] * 4 + rng.integers(0, 4, (n, 16))
    noise = rng.integers(0, VOCAB, (n, 16))
    grids = np.where(rng.random((n, 16)) < 0.6, own, noise)
    return grids.reshape(n, 4, 4), labels


@pytest.fixture(scope="module")
def pretrained(tiny_model_dir, tmp_path_factory):
    codes, labels = class_coded_grids(600)
    out = tmp_path_factory.mktemp("code_pretrain") / "model"
    record = pretrain_code_embeddings(
        tiny_model_dir, codes, labels, VOCAB, out, CodePretrainConfig(steps=300, batch_size=32)
    )
    return out, record


def test_code_rows_learn_the_classes(pretrained):
    out, record = pretrained
    assert record == json.loads((out / CODE_PRETRAIN_RECORD).read_text())
    assert record["n_train"] == 540 and record["n_held_out"] == 60
    # The signal is strong: a linear head on the mean code embedding reads the class on held-out grids.
    assert record["held_out_accuracy"] > record["held_out_majority_rate"] + 0.4, record


def test_only_the_code_rows_move(tiny_model_dir, pretrained):
    out, _ = pretrained
    model, processor = load_model_and_processor(out)
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids([code_token(i) for i in range(VOCAB)])
    assert all(len(tokenizer(code_token(i), add_special_tokens=False).input_ids) == 1 for i in (0, VOCAB - 1))
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    name = next(k for k in after if k.endswith("embed_tokens.weight"))
    old_rows = before[name].shape[0]
    assert min(ids) >= old_rows  # the code tokens are new rows
    assert torch.equal(after[name][:old_rows], before[name])  # the vocabulary's own rows are untouched
    moved = [k for k in before if k != name and not torch.equal(before[k], after[k][: before[k].shape[0]])]
    assert moved == []  # nothing else trained (lm_head grew, its old rows kept)
    rows = after[name][ids]
    # Rescaled to the other rows' mean norm, and not all alike: they carry what was learnt.
    assert rows.norm(dim=1).mean().item() == pytest.approx(before[name].norm(dim=1).mean().item(), rel=1e-4)
    same_class = torch.nn.functional.cosine_similarity(rows[0:1], rows[1:4]).mean()
    other_class = torch.nn.functional.cosine_similarity(rows[0:1], rows[20:40]).mean()
    assert same_class > other_class + 0.2, (same_class, other_class)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


def test_refuses_ids_outside_the_vocabulary(tiny_model_dir, tmp_path):
    codes, labels = class_coded_grids(100)
    with pytest.raises(UserError, match="ids must lie in 0-9"):
        pretrain_code_embeddings(tiny_model_dir, codes, labels, 10, tmp_path / "m")
    assert not (tmp_path / "m").exists()
