"""Guards on how a recipe was launched: the process count accelerate really starts, and the vLLM install `use_vllm`
needs."""

from __future__ import annotations

import os

from ..errors import UserError


def check_launch() -> None:
    """Refuse the one launch that silently trains on fewer processes than asked.

    `accelerate launch --cpu --num_processes N` (N > 1) starts a single process in accelerate 1.15 (its multi-CPU
    path needs an MPI hostfile); it sets MASTER_ADDR/MASTER_PORT for N processes but no WORLD_SIZE. That run would
    look like data-parallel training and be one process.
    """
    env = os.environ
    single = "WORLD_SIZE" not in env and not any(k in env for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"))
    if env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_PORT" in env and single:
        raise UserError(
            "accelerate launch: --cpu with --num_processes > 1 starts only ONE process (accelerate needs an MPI "
            "hostfile for multi-CPU); for N CPU processes run `accelerate launch --multi_gpu --num_processes N ...` "
            "(no --cpu: on a machine without GPUs it runs N processes over gloo) or `--config_file "
            "recipes/accelerate/cpu.yaml`"
        )


VLLM_MODES = ("colocate", "server")


VLLM_RANGE = (
    ">=0.30.0,<=0.31.0"  # pyproject's `vllm` extra: inside TRL 1.16's 0.22-0.31, 0.30+ for multimodal server mode
)


def check_vllm(training_args) -> None:
    """With `use_vllm`, refuse up front (one line) a vLLM that is missing or outside TRL's range, or a bad mode.

    TRL would otherwise fail deep inside the trainer after the model is loaded, or only warn on a version it does
    not support.
    """
    if not getattr(training_args, "use_vllm", False):
        return
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    if training_args.vllm_mode not in VLLM_MODES:
        raise UserError(f"vllm_mode: expected one of {', '.join(VLLM_MODES)}, got {training_args.vllm_mode!r}")
    try:
        installed = version("vllm")
    except PackageNotFoundError:
        raise UserError(
            f"use_vllm: vLLM is not installed; install the extra (`pip install 'astroreason[vllm]'`, vllm{VLLM_RANGE}, "
            "needs a GPU) or pass --use_vllm false"
        ) from None
    if Version(Version(installed).base_version) not in SpecifierSet(VLLM_RANGE):
        raise UserError(
            f"use_vllm: vLLM {installed} is outside the supported range vllm{VLLM_RANGE} (pyproject's vllm extra)"
        )
    try:
        import vllm  # noqa: F401  (an installed but broken vLLM, e.g. on a CPU-only machine)
    except Exception as err:  # noqa: BLE001  any import failure is the same user-facing problem
        raise UserError(
            f"use_vllm: vLLM {installed} is installed but cannot be imported ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None
