"""The token arm: discrete image tokens (built-in FSQ codec, AION-1 adapter), their text renderings, the token cache.
A built-in spectrum codec (`spectrum_fsq`) gives stellar spectra codes of the same form, a one-row grid.

Images or flux -> codec ids (`Codec.encode`) -> cached on disk per manifest + codec (`encode_prepared`,
`load_codes`) -> rendered to prompt text (`render`) -> the token arm's split (`token_split`).
"""

from .cache import encode_prepared, load_codes, matched_image_split, token_split
from .codec import Codec, InputSpec
from .loading import load_codec
from .render import RENDERINGS, add_code_token_strings, render

__all__ = [
    "Codec",
    "InputSpec",
    "RENDERINGS",
    "add_code_token_strings",
    "encode_prepared",
    "load_codec",
    "load_codes",
    "matched_image_split",
    "render",
    "token_split",
]
