"""The memory plan of a training run, per GPU, before a GPU is booked (docs/gpu.md, "Memory plan").

`memory_plan` is pure arithmetic on the model's parameter counts (`count_parameters`, from a built model, real or on
the meta device), its shape (`model_shape`, from its config) and the run's batch and sequence lengths. Weights,
gradients and optimizer states follow from the counts and the dtypes each strategy trains in; the parameter and
optimizer bytes of a plain (one-process or DDP) run are exact (tests/test_memory.py measures them). Activations, the
generation cache, vLLM's share and the fixed overhead are estimates, with their formulas in docs/gpu.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..errors import UserError

GIB = 1024**3
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")
# What each strategy divides by the process count: (weights, gradients, optimizer states).
SHARDED = {
    "ddp": (False, False, False),
    "zero1": (False, False, True),
    "zero2": (False, True, True),
    "zero3": (True, True, True),
    "fsdp": (True, True, True),
}
ADAM_STEP_BYTES = 4  # torch's AdamW keeps one float32 `step` tensor per parameter tensor
LOGIT_BYTES = 10  # per logit: the bf16 logits, their fp32 copy for the loss, and that copy's fp32 gradient
OVERHEAD_BYTES = GIB  # CUDA context, cuBLAS/NCCL workspaces: a fixed reserve, not measured
ACT_BYTES = 2  # activations in bf16


@dataclass(frozen=True)
class ParameterCounts:
    """A model's parameters as it will train (tied weights counted once).

    Args:
        params: All parameters.
        weight_bytes: Their bytes as loaded (numel x element size).
        trainable: Parameters that take a gradient.
        trainable_bytes: Their bytes as loaded.
        trainable_tensors: Trainable tensors (AdamW keeps a step counter per tensor).
    """

    params: int
    weight_bytes: int
    trainable: int
    trainable_bytes: int
    trainable_tensors: int


@dataclass(frozen=True)
class ModelShape:
    """What the activation and cache estimates read from a model's config (language model and vision tower)."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    kv_heads: int
    head_dim: int
    vision_layers: int = 0
    vision_hidden: int = 0
    vision_intermediate: int = 0
    patches_per_visual_token: int = 1  # the vision tower's patches merged into one token (merge_size^2)


@dataclass(frozen=True)
class RunShape:
    """What one training step holds per GPU.

    Args:
        batch: Sequences in one forward/backward (`per_device_train_batch_size`).
        sequence_tokens: Tokens of the longest sequence (prompt, visual tokens and completion).
        logit_tokens: Positions whose logits are computed (SFT: the whole sequence; GRPO: the completion + 1).
        visual_tokens: Visual tokens of one sequence (all its images).
        checkpointing: Activation (gradient) checkpointing on.
        generation_batch: GRPO without vLLM: sequences generated at once with transformers (0: no generation).
        vllm_fraction: GRPO with vLLM colocated: the share of the GPU vLLM reserves (0: none on this GPU).
    """

    batch: int
    sequence_tokens: int
    logit_tokens: int
    visual_tokens: int = 0
    checkpointing: bool = True
    generation_batch: int = 0
    vllm_fraction: float = 0.0


def count_parameters(model) -> ParameterCounts:
    """The counts of a built model (real or on the meta device; a peft model's adapters are its trainable ones)."""
    params = list(model.parameters())  # unique tensors: tied weights once
    trainable = [p for p in params if p.requires_grad]
    return ParameterCounts(
        params=sum(p.numel() for p in params),
        weight_bytes=sum(p.numel() * p.element_size() for p in params),
        trainable=sum(p.numel() for p in trainable),
        trainable_bytes=sum(p.numel() * p.element_size() for p in trainable),
        trainable_tensors=len(trainable),
    )


def model_shape(config) -> ModelShape:
    """The shape of a vision-language model from its config (`text_config`, `vision_config`; a text-only config
    is its own text config)."""
    text = getattr(config, "text_config", None) or config
    vision = getattr(config, "vision_config", None)
    heads = text.num_attention_heads
    shape = dict(
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
    )
    if vision is not None:
        shape.update(
            vision_layers=getattr(vision, "depth", None) or vision.num_hidden_layers,
            vision_hidden=vision.hidden_size,
            vision_intermediate=vision.intermediate_size,
            patches_per_visual_token=getattr(vision, "spatial_merge_size", 1) ** 2,
        )
    return ModelShape(**shape)


def state_bytes(counts: ParameterCounts, strategy: str, *, mixed_precision: bool = True) -> dict[str, int]:
    """Weights, gradients and optimizer states (AdamW) of the whole model, before any sharding.

    - ddp (and one process): as the model is loaded; a gradient per trainable parameter in its dtype, AdamW's m and
      v in that dtype too (torch makes them `zeros_like` the parameter) plus a float32 step per tensor. With a bf16
      model that is pure bf16 training; peft keeps LoRA adapters in float32.
    - zero1/2/3 (DeepSpeed with bf16): the module in bf16 (2 bytes), bf16 gradients (2) and float32 master weights,
      m and v in the optimizer (12); without mixed precision float32 weights and gradients, m and v (8).
    - fsdp (accelerate's FSDP2 with mixed precision): trainable parameters upcast to float32 (frozen ones stay as
      loaded), float32 gradients, m and v, and a step per tensor.
    """
    check_strategy(strategy)
    if strategy == "ddp":
        weights, grads = counts.weight_bytes, counts.trainable_bytes
        optimizer = 2 * counts.trainable_bytes + ADAM_STEP_BYTES * counts.trainable_tensors
    elif strategy.startswith("zero"):
        width = 2 if mixed_precision else 4
        weights, grads = width * counts.params, width * counts.trainable
        optimizer = (12 if mixed_precision else 8) * counts.trainable
    else:
        frozen = counts.weight_bytes - counts.trainable_bytes
        trainable = 4 * counts.trainable if mixed_precision else counts.trainable_bytes
        weights, grads = frozen + trainable, trainable
        optimizer = 2 * trainable + ADAM_STEP_BYTES * counts.trainable_tensors
    return {"weights": weights, "gradients": grads, "optimizer": optimizer}


def sharded_bytes(states: dict[str, int], strategy: str, processes: int) -> dict[str, int]:
    """One GPU's share of `state_bytes` under `strategy` over `processes` (ceil division: a shard is padded).
    Under DDP with several processes the gradients count twice: the reducer's buckets are a second copy
    (accelerate leaves `gradient_as_bucket_view` off)."""
    check_processes(processes)
    share = {
        part: -(-states[part] // processes) if sharded else states[part]
        for part, sharded in zip(("weights", "gradients", "optimizer"), SHARDED[check_strategy(strategy)])
    }
    if strategy == "ddp" and processes > 1:
        share["gradients"] *= 2
    return share


def layer_activation_bytes(tokens: int, hidden: int, intermediate: int, layers: int, checkpointing: bool) -> int:
    """An estimate of what the decoder (or vision) layers keep for the backward pass, in bf16.

    One layer keeps about 16*hidden + 8*intermediate bytes per token: the inputs of its two norms and of its
    residual branches, Q, K, V and the attention output (no seq^2 term: sdpa/flash attention), and the MLP's gate,
    up, activation and product (4 x intermediate). With checkpointing each layer keeps only its input
    (hidden x 2 bytes) and one layer at a time is recomputed in full."""
    per_layer = tokens * (16 * hidden + 8 * intermediate)
    if checkpointing:
        return layers * tokens * hidden * ACT_BYTES + per_layer
    return layers * per_layer


def activation_bytes(shape: ModelShape, run: RunShape) -> int:
    """Estimated activations of one forward/backward: the language model over the batch's sequences, the vision
    tower over their patches, and the logits (`LOGIT_BYTES` each), which dominate at Qwen's ~152k vocabulary."""
    text = layer_activation_bytes(
        run.batch * run.sequence_tokens, shape.hidden, shape.intermediate, shape.layers, run.checkpointing
    )
    patches = run.batch * run.visual_tokens * shape.patches_per_visual_token
    vision = layer_activation_bytes(
        patches, shape.vision_hidden, shape.vision_intermediate, shape.vision_layers, run.checkpointing
    )
    logits = run.batch * run.logit_tokens * shape.vocab * LOGIT_BYTES
    return text + vision + logits


def generation_cache_bytes(shape: ModelShape, run: RunShape) -> int:
    """GRPO generating with transformers: the KV cache of the generation batch (K and V, bf16, every layer)."""
    return run.generation_batch * run.sequence_tokens * shape.layers * 2 * shape.kv_heads * shape.head_dim * 2


def memory_plan(
    counts: ParameterCounts,
    shape: ModelShape,
    run: RunShape,
    *,
    strategy: str = "ddp",
    processes: int = 1,
    gpu_memory_gib: float = 80.0,
    mixed_precision: bool = True,
    reference_bytes: int = 0,
) -> dict:
    """One GPU's memory under `strategy` over `processes`: each part in bytes and GiB, the total, and whether it
    fits in `gpu_memory_gib`. `reference_bytes`: the weights of a separate reference model (GRPO with beta > 0 and
    no LoRA), sharded like the weights. The parts are added as if all were live at once (conservative)."""
    check_gpu_memory(gpu_memory_gib)
    parts = sharded_bytes(state_bytes(counts, strategy, mixed_precision=mixed_precision), strategy, processes)
    parts["reference"] = -(-reference_bytes // processes) if SHARDED[strategy][0] else reference_bytes
    parts["activations"] = activation_bytes(shape, run)
    parts["generation_cache"] = generation_cache_bytes(shape, run)
    parts["vllm"] = round(run.vllm_fraction * gpu_memory_gib * GIB)
    parts["overhead"] = OVERHEAD_BYTES
    total = sum(parts.values())
    return {
        "strategy": strategy,
        "processes": processes,
        "gpu_memory_gib": gpu_memory_gib,
        "fits": total <= gpu_memory_gib * GIB,
        "total_gib": round(total / GIB, 3),
        "parts_gib": {k: round(v / GIB, 3) for k, v in parts.items()},
        "parts_bytes": parts,
        "total_bytes": total,
        "params": counts.params,
        "trainable_params": counts.trainable,
        "batch": run.batch,
        "sequence_tokens": run.sequence_tokens,
        "logit_tokens": run.logit_tokens,
        "visual_tokens": run.visual_tokens,
        "activation_checkpointing": run.checkpointing,
        "exact": exact_parts(strategy, processes),
        "estimated": ["activations", "generation_cache", "vllm", "overhead"],
    }


def exact_parts(strategy: str, processes: int) -> list[str]:
    """The parts that are counted, not estimated (tests/test_memory.py measures them on one process): DDP's
    weights and optimizer, and its gradients on one process (several add the reducer's buckets)."""
    if strategy != "ddp":
        return []
    return ["weights", "gradients", "optimizer"] if processes == 1 else ["weights", "optimizer"]


def plan_table(plan: dict) -> str:
    """The plan as a few readable lines."""
    verdict = "fits" if plan["fits"] else "DOES NOT FIT"
    head = (
        f"memory plan per GPU: {plan['strategy']}, {plan['processes']} process"
        f"{'es' if plan['processes'] > 1 else ''}, {plan['gpu_memory_gib']:g} GiB GPU: {verdict}"
    )
    rows = [f"  {part:<17}{gib:>9.2f} GiB" for part, gib in plan["parts_gib"].items()]
    return "\n".join([head, *rows, f"  {'total':<17}{plan['total_gib']:>9.2f} GiB"])


# --- where the strategy comes from -----------------------------------------------------------------------------------


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise UserError(f"plan_strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    return strategy


def check_processes(processes) -> int:
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise UserError(f"plan_processes: expected a positive number of processes, got {processes!r}")
    return processes


def check_gpu_memory(gib) -> float:
    if isinstance(gib, bool) or not isinstance(gib, (int, float)) or not gib > 0 or gib == float("inf"):
        raise UserError(f"gpu_memory_gib: expected a positive number of GiB, got {gib!r}")
    return float(gib)


def launched_strategy(env=None) -> tuple[str, int]:
    """(strategy, processes) of the running launch, from what `accelerate launch` sets in the environment:
    ACCELERATE_USE_DEEPSPEED with ACCELERATE_DEEPSPEED_ZERO_STAGE, ACCELERATE_USE_FSDP, and WORLD_SIZE."""
    env = os.environ if env is None else env
    processes = int(env.get("WORLD_SIZE", "1") or 1)
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2") or 2)
        return ("ddp" if stage == 0 else f"zero{stage}"), processes
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp", processes
    return "ddp", processes


def accelerate_config_strategy(config: dict) -> tuple[str, int]:
    """(strategy, processes) of an accelerate config file's contents (recipes/accelerate/*.yaml)."""
    kind = config.get("distributed_type", "NO")
    processes = int(config.get("num_processes", 1) or 1) * int(config.get("num_machines", 1) or 1)
    if kind == "DEEPSPEED":
        stage = int((config.get("deepspeed_config") or {}).get("zero_stage", 2))
        return ("ddp" if stage == 0 else f"zero{stage}"), processes
    if kind == "FSDP":
        return "fsdp", processes
    return "ddp", processes


# --- the plan of a built trainer (`estimate_only`) -------------------------------------------------------------------

SAMPLE_ROWS = 64  # rows of the training set whose lengths are measured


def row_tokens(row: dict, processor, visual_tokens_per_image: int) -> tuple[int, int]:
    """(tokens, visual tokens) of one training row as the model reads it: the chat template's text tokens (a
    prompt alone ends with the generation prompt) and, per image, its visual tokens and the two vision markers."""
    if "input_ids" in row:  # SFT tokenized a text-only dataset when it was built
        return len(row["input_ids"]), 0
    completion = list(row.get("completion") or [])
    text = processor.apply_chat_template(
        list(row["prompt"]) + completion, tokenize=False, add_generation_prompt=not completion
    )
    tokenizer = getattr(processor, "tokenizer", processor)
    images = len(row.get("images") or []) + (row.get("image") is not None)
    visual = images * visual_tokens_per_image
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + visual + 2 * images, visual


def trainer_run_shape(trainer, args) -> RunShape:
    """The `RunShape` of a built SFT or GRPO trainer: its batch, checkpointing and vLLM settings, and the longest of
    the first `SAMPLE_ROWS` training rows (GRPO: that prompt plus `max_completion_length`)."""
    from ..models import family_for

    targs, processor = trainer.args, trainer.processing_class
    per_image = args.arm_class().visual_tokens(family_for(trainer.model), processor, args) or 0
    rows = trainer.train_dataset.select(range(min(SAMPLE_ROWS, len(trainer.train_dataset))))
    lengths = [row_tokens(row, processor, per_image) for row in rows]
    tokens, visual = max(t for t, _ in lengths), max(v for _, v in lengths)
    batch = targs.per_device_train_batch_size
    checkpointing = bool(getattr(targs, "activation_checkpointing", False) or targs.gradient_checkpointing)
    if not hasattr(targs, "num_generations"):  # SFT: the whole sequence, cut at max_length when set
        tokens = min(tokens, targs.max_length) if targs.max_length else tokens
        return RunShape(batch, tokens, tokens, visual, checkpointing)
    completion = targs.max_completion_length
    colocated = targs.use_vllm and targs.vllm_mode == "colocate"
    return RunShape(
        batch,
        tokens + completion,
        completion + 1,  # TRL asks the model for the completion's logits only (logits_to_keep + 1)
        visual,
        checkpointing,
        generation_batch=0 if targs.use_vllm else batch * (targs.steps_per_generation or 1),
        vllm_fraction=targs.vllm_gpu_memory_utilization if colocated else 0.0,
    )


def trainer_memory_plan(trainer, args) -> dict:
    """The memory plan of a built trainer under the launch's strategy and process count (`launched_strategy`), or
    the ones `args.plan_strategy` / `args.plan_processes` ask for."""
    strategy, processes = launched_strategy()
    strategy, processes = args.plan_strategy or strategy, args.plan_processes or processes
    ref = getattr(trainer, "ref_model", None)  # GRPO with beta > 0 and no LoRA: a second, frozen copy
    plan = memory_plan(
        count_parameters(trainer.model),
        model_shape(trainer.model.config),
        trainer_run_shape(trainer, args),
        strategy=strategy,
        processes=processes,
        gpu_memory_gib=args.gpu_memory_gib,
        mixed_precision=bool(trainer.args.bf16 or trainer.args.fp16),
        reference_bytes=count_parameters(ref).weight_bytes if ref is not None else 0,
    )
    plan["source"] = "plan_strategy" if args.plan_strategy or args.plan_processes else "launch"
    return plan


def print_memory_plan(trainer, args) -> dict:
    """Print the plan as one `MEMORY {json}` line and a short table (main process only)."""
    plan = trainer_memory_plan(trainer, args)
    if trainer.accelerator.is_main_process:
        print("MEMORY " + json.dumps(plan, sort_keys=True), flush=True)
        print(plan_table(plan), flush=True)
    return plan
