"""What a GRPO recipe adds for zoom episodes (`--zoom true`, docs/zoom.md): the turn cap, a tool-capable chat
template, one `ZoomEnvironment` per rollout (TRL's `environment_factory`) and the zoom rewards."""

from __future__ import annotations

from ..errors import UserError
from ..models import family_for
from ..rewards import get_reward_funcs, skip_unanswered
from ..zoom import POSITION_COLUMN, environment_factory, zoom_tool
from ..zoom.chat import suppressing_placeholders, tool_capable
from ..zoom.lint import lint_tool_turns
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
    """What a zoom result costs the model: the crop's visual tokens (asked of the processor once), or the text's."""
    if args.modality == "image":
        visual = family.visual_tokens(processor, args.image_size)
        return lambda content: visual if isinstance(content, list) else _text_tokens(processor, content)
    return lambda content: _text_tokens(processor, content)


def _text_tokens(processor, text: str) -> int:
    tokenizer = getattr(processor, "tokenizer", processor)
    return len(tokenizer(str(text), add_special_tokens=False)["input_ids"])


def zoom_parts(args: GalaxyScriptArguments, training_args, model, processor, reward_funcs: list, train_dataset) -> dict:
    """The `GRPOTrainer` keywords of a zoom run: `environment_factory` and the reward functions (the recipe's, then
    `zoom_cost`, which also logs the zoom metrics, and `zoom_bonus` when asked; all of them skip unanswered
    episodes unless `zoom_skip_unanswered` is off). Makes the processor tool-capable, keeps the video token out
    of sampling (`suppress_video_tokens`), and lints the tool's turns on the training rows (`zoom.lint`): what the
    tool returns must carry the galaxy and nothing else."""
    family = family_for(model)
    tool_capable(processor, family)
    suppress_video_tokens(training_args, model)
    tool = zoom_tool(
        args.arm_settings(),
        min_side=args.zoom_min_side,
        max_aspect=args.zoom_max_aspect,
        pixel_multiple=family.pixel_multiple,
        count_tokens=token_counter(args, processor, family),
    )
    lint_tool_turns(tool, args.train_split, train_dataset[POSITION_COLUMN])
    names = [getattr(f, "__name__", "") for f in reward_funcs]
    extra = ["zoom_cost"] + (["zoom_bonus"] if args.zoom_bonus else [])
    funcs = reward_funcs + [f for f in get_reward_funcs(extra) if f.__name__ not in names]
    if args.zoom_skip_unanswered:
        funcs = [skip_unanswered(f) for f in funcs]
    factory = environment_factory(tool, zoom_cost=args.zoom_cost, zoom_bonus=args.zoom_bonus)
    return dict(environment_factory=factory, reward_funcs=funcs)
