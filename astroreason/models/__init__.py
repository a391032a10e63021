"""The model layer: one `ModelFamily` per kind of vision-language model (family.py), chosen from the model's config;
loading (loading.py), checkpoint hashes (files.py) and tiny offline models (tiny.py).

A family is one module here that registers one instance (qwen2_5_vl.py, qwen3_vl.py, gemma3.py); importing it below is its
registration. See docs/models.md.
"""

from . import gemma3, qwen2_5_vl, qwen3_vl  # noqa: F401  (registration: each module registers its family)
from .code_tokens import CODE_TOKEN_INITS, check_init, codec_vectors, tied_embeddings
from .family import ModelFamily, families, family_for, find_family, register
from .files import ANSWER_FILES, adapter_base_dir, answer_files_hash, file_hash, weights_hash
from .loading import (
    add_code_tokens,
    check_code_tokens,
    check_image_size,
    checkpoint_family,
    has_tokenizer,
    load_model_and_processor,
    load_processor,
    read_config,
    save_with_code_tokens,
    tokenizer_dir,
)
from .qwen_vl import CHAT_TEMPLATE, SPECIAL_TOKENS, train_tokenizer
from .tiny import BUILD_RECORD, SIZE_SPECS, SIZES, TinyModelSpec, build_record, build_tiny_model, tokenizer_corpus

ARCHS = tuple(families())  # the families with a tiny offline builder: `astroreason model tiny --arch`

__all__ = [
    "ANSWER_FILES",
    "ARCHS",
    "CODE_TOKEN_INITS",
    "BUILD_RECORD",
    "CHAT_TEMPLATE",
    "SIZES",
    "SIZE_SPECS",
    "SPECIAL_TOKENS",
    "ModelFamily",
    "TinyModelSpec",
    "adapter_base_dir",
    "add_code_tokens",
    "answer_files_hash",
    "build_record",
    "build_tiny_model",
    "check_code_tokens",
    "check_image_size",
    "check_init",
    "codec_vectors",
    "checkpoint_family",
    "families",
    "family_for",
    "file_hash",
    "find_family",
    "has_tokenizer",
    "load_model_and_processor",
    "load_processor",
    "read_config",
    "register",
    "save_with_code_tokens",
    "tokenizer_corpus",
    "tied_embeddings",
    "tokenizer_dir",
    "train_tokenizer",
    "weights_hash",
]
