"""The trainer's callbacks, in one place: the spend ledger's, the integrity guards', and the user's own.

`build_sft_trainer` and `build_grpo_trainer` add, in this order: the budget callback (when the run charges the
spend ledger), the training alarms and the seed fingerprint (`integrity`), then the `callbacks` the user named by
dotted path. The callback classes live with what they guard (`integrity.alarms`, `integrity.fingerprint`, the
budget); this module only chooses and builds them from the recipe's arguments, so training imports the guards from
below and nothing here imports training or evaluation.
"""

from __future__ import annotations

from .budget.callback import DEFAULT_LEDGER, BudgetCallback, budget_callback
from .dotted import import_dotted
from .integrity.alarms import TrainingAlarms, pipeline_alarms
from .integrity.fingerprint import RunFingerprint
from .integrity.history import TrainingLog

# A zoom run's shaping rewards are constant by design (0 at zoom_cost 0, or while no rollout zooms; the bonus until a
# zoom answers right): the zoom-rate rules watch the tool, `constant_reward` leaves them alone.
ZOOM_SHAPING_REWARDS = ("zoom_cost_reward", "zoom_bonus_reward")


def budget_callbacks(args, training_args) -> list:
    """The spend ledger's callback when the run sets `max_dollars` or `ledger`, or asks for an estimate
    (`pilot_steps`, `estimate_only`), else none (nothing charged).

    The price is looked up before the model is loaded: an unknown device price is refused at once (fail closed).
    """
    if args.max_dollars is None and args.ledger is None and not (args.pilot_steps or args.estimate_only):
        return []

    return [
        budget_callback(
            args.max_dollars,
            prices=args.prices,
            ledger=args.ledger or DEFAULT_LEDGER,
            price_gpu_hour=args.price_gpu_hour,
            price_key=args.price_key,
            run=f"train:{training_args.output_dir}",
            pilot_steps=args.pilot_steps,
            estimate_only=args.estimate_only,
        )
    ]


def integrity_callbacks(args, *, grpo: bool = False, base: dict | None = None) -> list:
    """The training alarms (a shortcut's shape in the logs marks the run suspect; the rules per trainer are in
    `integrity.alarms.pipeline_alarms`), the run's seed fingerprint, with its base record (`training.base_record`),
    and its training log (`integrity.history`: the log history, kept in the run's directory)."""
    from dataclasses import asdict, replace

    alarms = pipeline_alarms("grpo" if grpo else "sft")
    if args.alarm_no_signal_logs is not None:
        alarms = replace(alarms, no_signal_logs=args.alarm_no_signal_logs)
    if args.alarm_constant_reward_logs is not None:
        alarms = replace(alarms, constant_reward_logs=args.alarm_constant_reward_logs)
    if grpo and args.zoom:  # the zoom-rate rules watch the turn cap of a zoom run
        alarms = replace(alarms, zoom_cap=args.zoom_max_turns, constant_reward_skip=ZOOM_SHAPING_REWARDS)
    return [TrainingAlarms(alarms), RunFingerprint(extra=asdict(args), base=base), TrainingLog()]


def user_callbacks(args) -> list:
    """The `callbacks` the user named, built (with no arguments) before any model is loaded."""

    return [import_dotted(path, "callbacks")() for path in args.callbacks]


def budget_estimate(trainer) -> dict | None:
    """The estimate a budget callback made from this trainer's pilot steps, or None."""

    return next(
        (c.estimate for c in trainer.callback_handler.callbacks if isinstance(c, BudgetCallback) and c.estimate),
        None,
    )


def budget_stop(trainer) -> str | None:
    """Why a budget callback stopped this trainer, or None."""

    return next(
        (
            c.stopped_reason
            for c in trainer.callback_handler.callbacks
            if isinstance(c, BudgetCallback) and c.stopped_reason
        ),
        None,
    )
