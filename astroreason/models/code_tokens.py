"""How the `special` rendering's new embedding rows start: one row per added code token, chosen by `init`.

- `mean`: the mean of the existing rows plus small seeded Gaussian noise (1% of the rows' per-dimension spread), so
  that no two code tokens start identical (transformers' `mean_resizing` draws from a normal of 1e-5 x the rows'
  covariance instead; ours is seeded and costs no covariance of the whole vocabulary).
- `codebook`: each code's codec vector (for the built-in FSQ, the quantised level values of its id) mapped to the
  embedding width through a fixed seeded random projection, centred on the existing rows' mean and scaled to their
  spread: codes whose vectors are close start close, so the model need not learn from scratch that code 41 looks
  like code 42.

Only the rows of the tokens just added are written; rows already in the tokenizer are never touched.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError

CODE_TOKEN_INITS = ("mean", "codebook")
MEAN_NOISE = 0.01  # noise of `mean`, as a fraction of the existing rows' per-dimension standard deviation


def check_init(init: str, where: str = "code_token_init") -> str:
    if init not in CODE_TOKEN_INITS:
        raise UserError(f"{where}: expected one of {', '.join(CODE_TOKEN_INITS)}, got {init!r}")
    return init


def codec_vectors(codec) -> np.ndarray:
    """The vector of each code id [vocab_size, D]: for the built-in FSQ, its quantiser's level values (asked of the
    quantiser's own `dequantize`); a codec that does not expose them is refused for the `codebook` init."""
    import torch

    quantizer = getattr(getattr(codec, "model", None), "quantizer", None)
    if quantizer is None or not hasattr(quantizer, "dequantize"):
        raise UserError(
            f"code_token_init: codebook needs the codec's code vectors, which {getattr(codec, 'name', codec)!s} "
            f"({type(codec).__name__}) does not expose; use --code_token_init mean"
        )
    ids = torch.arange(codec.vocab_size).view(1, 1, -1)  # one [1, 1, V] "grid" holding every id
    with torch.no_grad():
        vectors = quantizer.dequantize(ids)  # [1, D, 1, V]
    return vectors[0, :, 0, :].T.float().numpy()


def new_rows(old, n: int, init: str, *, vectors: np.ndarray | None = None, seed: int = 0):
    """`n` rows [n, H] for new tokens, from the existing rows `old` [R, H] (see the module docstring)."""
    import torch

    check_init(init)
    old = old.detach().float()
    mean, spread = old.mean(0), old.std(0)
    generator = torch.Generator().manual_seed(int(seed))
    if init == "mean":
        return mean + MEAN_NOISE * spread * torch.randn(n, old.shape[1], generator=generator)
    if vectors is None or len(vectors) != n:
        raise ValueError(
            f"codebook init needs one codec vector per new row ({n}), got {None if vectors is None else len(vectors)}"
        )
    codes = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
    codes = codes - codes.mean(0)
    projection = torch.randn(codes.shape[1], old.shape[1], generator=generator)  # fixed by the seed
    projected = codes @ projection
    # Same spread as the existing rows around their mean: new rows sit where the vocabulary lives.
    scale = (old - mean).norm(dim=1).pow(2).mean().sqrt() / projected.norm(dim=1).pow(2).mean().sqrt().clamp_min(1e-12)
    return mean + scale * projected


def tied_embeddings(model) -> bool:
    """Whether the model's output embeddings are its input embeddings (one tensor, `tie_word_embeddings`)."""
    out = model.get_output_embeddings()
    return out is not None and out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def init_code_rows(model, ids: list[int], n_old: int, init: str, *, vectors=None, seed: int = 0) -> None:
    """Write the rows of the added tokens `ids` in the input embeddings and, when it is not tied to them, the output
    embeddings (same init, same projection); `n_old` rows (the tokenizer's earlier tokens) are the reference."""
    import torch

    weights = [model.get_input_embeddings().weight]
    if model.get_output_embeddings() is not None and not tied_embeddings(model):
        weights.append(model.get_output_embeddings().weight)
    index = torch.as_tensor(ids, dtype=torch.long)
    with torch.no_grad():
        for weight in weights:
            rows = new_rows(weight[:n_old], len(ids), init, vectors=vectors, seed=seed)
            weight[index.to(weight.device)] = rows.to(weight.dtype).to(weight.device)
