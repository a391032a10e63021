"""What a recipe adds for zoom (`--zoom true`, docs/zoom.md). GRPO: the turn cap, a tool-capable chat template, one
`ZoomEnvironment` per rollout (TRL's `environment_factory`) and the zoom rewards. SFT: the warm start, trained on
zoom trajectories made from the data (`zoom.trajectories`)."""

from __future__ import annotations

import json

from ..data.focus import focus_boxes
from ..errors import UserError
from ..models import family_for
from ..rewards import get_reward_funcs, skip_unanswered
from ..zoom import POSITION_COLUMN, SPLIT_COLUMN, environment_factory, zoom_schema
from ..zoom.chat import suppressing_placeholders, tool_capable
from ..zoom.lint import lint_tool_turns
from ..zoom.trajectories import taught_rows, zoom_trajectories
from .arguments import GalaxyScriptArguments


def apply_turn_cap(args: GalaxyScriptArguments, training_args) -> None:
    """The turn cap is TRL's `max_tool_calling_iterations` (set before the trainer reads it)."""
    cap = training_args.max_tool_calling_iterations
    if cap is not None and cap != args.zoom_max_turns:
        raise UserError(
            f"max_tool_calling_iterations: {cap} disagrees with zoom_max_turns {args.zoom_max_turns}; "
            "a zoom run sets the turn cap with zoom_max_turns only"
        )
    training_args.max_tool_calling_iterations = args.zoom_max_turns


def suppress_video_tokens(training_args, model) -> None:
    """Never sample the video placeholder token (transformers generation). TRL suppresses the image token itself;
    once a tool has returned an image it marks every video token of the sequence as a video, and the forward pass
    then looks for a video that is not there (a random or early policy does sample it). vLLM's sampling has no
    such option, so a vLLM run is left as TRL makes it."""
    if training_args.use_vllm or getattr(model.config, "video_token_id", None) is None:
        return
    training_args.generation_kwargs = suppressing_placeholders(training_args.generation_kwargs, model.config)


def token_counter(args: GalaxyScriptArguments, processor, family):
    """What a zoom result costs the model: its text's tokens, and each image's visual tokens (asked of the processor
    once: every image the tool returns has the first view's size)."""
    visual = args.arm_class().visual_tokens(family, processor, args)

    def count(content) -> int:
        if isinstance(content, str):
            return _text_tokens(processor, content)
        return sum(visual if b["type"] == "image" else _text_tokens(processor, b.get("text", "")) for b in content)

    return count


def _text_tokens(processor, text: str) -> int:
    tokenizer = getattr(processor, "tokenizer", processor)
    return len(tokenizer(str(text), add_special_tokens=False)["input_ids"])


def linted_tool(args: GalaxyScriptArguments, model, processor, train_dataset):
    """The run's zoom tool, its processor made tool-capable (in place), and the tool's turns linted on the training
    rows (`zoom.lint`): what the tool returns must carry the galaxy and nothing else."""
    family = family_for(model)
    tool_capable(processor, family)
    tool = args.arm_class().zoom_tool(
        args,
        min_side=args.zoom_min_side,
        max_aspect=args.zoom_max_aspect,
        pixel_multiple=family.pixel_multiple,
        count_tokens=token_counter(args, processor, family),
    )
    lint_tool_turns(tool, args.train_split, train_dataset[POSITION_COLUMN])
    return tool


def zoom_parts(
    args: GalaxyScriptArguments, training_args, model, processor, reward_funcs: list, train_dataset, *, classes
) -> dict:
    """The `GRPOTrainer` keywords of a zoom run: `environment_factory` and the reward functions (the recipe's, then
    `zoom_cost`, which also logs the zoom metrics, and `zoom_bonus` when asked; all of them skip unanswered
    episodes unless `zoom_skip_unanswered` is off), with the tool of `linted_tool`; keeps the video token out of
    sampling (`suppress_video_tokens`). `classes` are the split's class names (`zoom_bonus` scores against them)."""
    suppress_video_tokens(training_args, model)
    tool = linted_tool(args, model, processor, train_dataset)
    names = [getattr(f, "__name__", "") for f in reward_funcs]
    extra = ["zoom_cost"] + (["zoom_bonus"] if args.zoom_bonus else [])
    funcs = reward_funcs + [f for f in get_reward_funcs(extra, classes) if f.__name__ not in names]
    if args.zoom_skip_unanswered:
        funcs = [skip_unanswered(f) for f in funcs]
    factory = environment_factory(tool, zoom_cost=args.zoom_cost, zoom_bonus=args.zoom_bonus)
    return dict(environment_factory=factory, reward_funcs=funcs)


def with_default_tools(chat_template: str, tools: list[dict]) -> str:
    """`chat_template` rendering `tools` when it is given none: TRL's vision collator renders conversations without
    a dataset's `tools` column, and a warm start's prompts must carry the tool schema its rollouts will see."""
    return "{%- if not tools %}{%- set tools = " + json.dumps(tools) + " %}{%- endif %}" + chat_template


def training_template(processor, family) -> str:
    """The chat template an assistant-only loss trains with: the processor's own where it marks the assistant's
    tokens (`{% generation %}`), else TRL's training variant of it; refused (one line) where neither exists."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers  # lazy: with the trainer

    template = processor.chat_template
    if has_generation_markers(template):
        return template
    try:
        patched = get_training_chat_template(processor)
    except ValueError:
        patched = None
    if patched is None:
        raise UserError(
            f"zoom: the {family.name} chat template marks no assistant tokens ({{% generation %}}) and TRL has no "
            "training variant of it, so a zoom warm start cannot train on the assistant's turns only"
        )
    return patched


def zoom_sft_parts(args: GalaxyScriptArguments, training_args, model, processor, datasets: dict) -> dict:
    """The `SFTTrainer` keywords of a zoom warm start (`zoom.trajectories`): the datasets (`train_dataset`,
    `eval_dataset`: each a zoom dataset or None) as zoom trajectories on each galaxy's focus box (`data.focus`),
    trained on the assistant's turns only (`assistant_only_loss`); for the image arm, TRL's vision collator with
    the training template and the tool schema. The tool is `linted_tool`'s."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling  # lazy: trl loads with the trainer

    tool = linted_tool(args, model, processor, datasets["train_dataset"])
    training_args.assistant_only_loss = True
    template = training_template(processor, family_for(model))
    tools = zoom_schema()
    parts = {}
    for name, dataset in datasets.items():
        if dataset is None:
            parts[name] = None
            continue
        split = dataset[0][SPLIT_COLUMN]
        focus, origin = focus_boxes(args.data_dir, split, dataset[POSITION_COLUMN], manifest=tool.manifest)
        seed, max_box = training_args.seed, args.zoom_sft_max_box
        taught = taught_rows(focus, fraction=args.zoom_sft_fraction, seed=seed, max_box=max_box)
        parts[name] = zoom_trajectories(dataset, tool, focus, taught, seed=seed, tools=tools)
        if name == "train_dataset" and training_args.process_index == 0:
            how = f"focus box side <= {max_box}" if max_box is not None else "a seeded choice"
            print(
                f"zoom warm start: {len(dataset)} trajectories, {taught.mean():.0%} zoom ({how}), boxes from the "
                f"{origin} focus (data.focus)"
            )
    if args.arm_class().carries_image:
        parts["data_collator"] = DataCollatorForVisionLanguageModeling(
            processor,
            max_length=training_args.max_length,
            pad_to_multiple_of=training_args.pad_to_multiple_of,
            assistant_only_loss=True,
            chat_template=with_default_tools(template, tools),
        )
    return parts
