"""Training alarms: a TrainerCallback that watches the logged metrics for the shapes a shortcut leaves.

A model that finds a shortcut (a row index, a duplicate, a leaked column) learns it fast and completely: the loss
falls toward zero abruptly, accuracy or reward jumps, every completion of a GRPO group gets the same reward
(TRL's `frac_reward_zero_std` climbs to 1) and the policy's entropy collapses. A GRPO run whose every group scores
alike at every step has the opposite trouble: every advantage is 0, it learns nothing, and its result is the starting
model's (`no_reward_signal`). One reward function that gives every completion the same value for many logs (an
accuracy of 0 on everything while the format reward still varies) teaches nothing either, though other rewards
keep the groups apart (`constant_reward`). Each rule fires once per metric; an alarm logs why and marks the run suspect
(`SUSPECT.json` in `output_dir`, which the ledger turns into the status `suspect`). It does not stop training
unless asked: the run finishes and is judged with its mark.

    trainer.add_callback(TrainingAlarms())          # or SFTTrainer(..., callbacks=[TrainingAlarms()])
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from transformers import TrainerCallback

from .gate import mark_suspect

logger = logging.getLogger(__name__)
ZOOM_RATE_KEY = "tools/call_frequency"  # TRL's GRPO log: mean tool calls per rollout
REWARD_PREFIX = "rewards/"  # TRL's GRPO log: rewards/<func name>/mean and /std over every completion scored
CONSTANT_TOL = 1e-9  # a std or a change of mean this small is 0 (a float mean of equal rewards may be off by an ulp)


@dataclass
class AlarmConfig:
    """Thresholds of the training alarms (defaults suit Galaxy10 SFT/GRPO; every one can be changed).

    Args:
        warmup_logs: Logs seen before the jump and abrupt-fall rules start (format learning is fast and legitimate).
        window: Logs whose median a new value is compared with.
        loss_floor: A training loss below this is "toward zero": a ten-class answer that is not a shortcut keeps
            some loss (a 90 % classifier spends ~0.3 nats on the class token).
        loss_drop: An abrupt fall: the loss drops below this fraction of the window's median (0: rule off).
        jump: An accuracy or reward rising by more than this (absolute) over the window's median.
        jump_keys: Logged metrics watched for jumps (substring match on the key; empty: rule off).
        zero_std_high: `frac_reward_zero_std` at or above this counts as collapsed ...
        zero_std_low: ... once it has been below this earlier in the run ...
        zero_std_patience: ... for this many consecutive logs.
        no_signal_logs: Consecutive logs with `frac_reward_zero_std` = 1 (every group's completions scored alike, so
            every advantage is 0 and the policy gets no gradient) after which the run is marked as learning nothing
            (0: rule off). One such log is normal (an untrained policy often fails a whole batch); 10 keeps the tiny
            recipes' 8-step smoke runs quiet, and in a real run it is 10 x `logging_steps` steps without one group
            whose rewards differ.
        constant_reward_logs: Consecutive logs in which one reward function gave every completion the same value
            (its logged std 0 and its mean unchanged) after which the run is marked suspect, once per reward function
            (0: rule off). It catches what `no_signal_logs` cannot see: an accuracy reward of 0 on every completion
            while the format reward still varies, so some groups differ but nothing rewards a right answer.
        constant_reward_skip: Reward functions (TRL's names, `zoom_cost_reward`) the rule leaves alone: shaping terms
            that are constant by design (a zoom run's `zoom_cost_reward` at cost 0, or while no rollout zooms; its
            `zoom_bonus_reward` until a zoom answers right), which the zoom rules watch instead.
        entropy_fraction: Entropy below this fraction of the first logged entropy is a collapse (0: rule off) ...
        entropy_floor: ... and so is entropy below this (nats per token).
        zoom_cap: A zoom run's turn cap (`zoom_max_turns`); 0 for a run without the zoom tool (the zoom rules off).
            The zoom rules watch TRL's `tools/call_frequency`, the mean tool calls per rollout in a log:
        zoom_patience: ... the zoom rate collapsed (0 calls for this many consecutive logs after some rollout
            zoomed: an outcome-only reward drove the tool out, and the run measures no zoom at all), or it sits at
            the cap (at least `zoom_cap` calls per rollout for this many consecutive logs: every episode zooms until
            it is cut off, which a per-call `zoom_cost` is meant to prevent).
        stop_on_alarm: Stop training at the first alarm (default: finish, marked suspect).
        watch_loss: Apply the loss rules. They suit a cross-entropy loss (SFT); GRPO's loss is a policy-gradient
            surrogate that is exactly 0 whenever every completion of a group scores the same (an untrained policy),
            so it is never watched in a log that carries rewards, and the GRPO recipe turns it off.
    """

    warmup_logs: int = 3
    window: int = 5
    loss_floor: float = 0.02
    loss_drop: float = 0.2
    jump: float = 0.3
    jump_keys: tuple[str, ...] = ("accuracy", "reward")
    zero_std_high: float = 0.95
    zero_std_low: float = 0.5
    zero_std_patience: int = 3
    no_signal_logs: int = 10
    constant_reward_logs: int = field(
        default=10,
        metadata={
            "help": "Consecutive logs in which one reward function scored every completion alike (std 0, same mean) "
            "before the run is marked suspect, once per reward (0: off)."
        },
    )
    constant_reward_skip: tuple[str, ...] = field(
        default=(), metadata={"help": "Reward functions (TRL's names) the constant_reward rule leaves alone."}
    )
    entropy_fraction: float = 0.1
    entropy_floor: float = 0.02
    zoom_cap: int = 0
    zoom_patience: int = 3
    stop_on_alarm: bool = False
    watch_loss: bool = True


def pipeline_alarms(trainer: str) -> AlarmConfig:
    """The alarms the recipes attach, per trainer (`sft` or `grpo`).

    SFT: an SFT completion is mostly answer-format tokens (`<answer>`, `</answer>`), and learning the format makes the
    mean loss fall abruptly, the mean token accuracy jump and the entropy fall far below a random start's, in a run
    that learns nothing but the format (the demo's image-arm SFT raised `loss_abrupt_fall` and `entropy_collapse`
    with the relative rules on). Its pipeline alarms are the absolute ones: a loss or an entropy toward zero.
    GRPO: everything but the loss (a policy-gradient surrogate, 0 whenever a group's rewards are equal).
    """
    if trainer == "sft":
        return AlarmConfig(loss_drop=0.0, jump_keys=(), entropy_fraction=0.0)
    if trainer == "grpo":
        return AlarmConfig(watch_loss=False)
    raise ValueError(f"trainer: expected sft or grpo, got {trainer!r}")


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


@dataclass
class AlarmState:
    """What the rules remember between logs."""

    history: dict[str, list[float]] = field(default_factory=dict)
    fired: set = field(default_factory=set)
    zero_std_run: int = 0
    zero_std_was_low: bool = False
    no_signal_run: int = 0
    # per reward function: (its one value, the logs in a row it was that value, the completions they scored)
    constant: dict[str, tuple[float, int, int | None]] = field(default_factory=dict)
    zoomed: bool = False
    no_zoom_run: int = 0
    at_cap_run: int = 0


def _number(raw) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def reward_names(logs: dict) -> list[str]:
    """The reward functions a training log scores, by TRL's names (`accuracy_reward`); eval logs (`eval_...`) aside."""
    return [k[len(REWARD_PREFIX) : -len("/mean")] for k in logs if k.startswith(REWARD_PREFIX) and k.endswith("/mean")]


def logged_completions(args, steps: int) -> int:
    """The completions GRPO scored in `steps` optimizer steps. GRPO's `per_device_train_batch_size` counts
    completions: a step takes `gradient_accumulation_steps` micro-batches on each of `world_size` processes, and with
    `num_iterations` > 1 each generation batch is reused that many times, so fewer completions are new (a log's
    count is then off by at most one generation batch; N logs' total is right)."""
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return round(steps * per_step / getattr(args, "num_iterations", 1))


def constant_reward_reason(name: str, value: float, logs: int, completions: int | None) -> str:
    """Why a constant reward teaches nothing: `accuracy reward was 0 on all 1,200 completions: ...`."""
    friendly = name.removesuffix("_reward")
    scope = f"all {completions:,} completions" if completions is not None else "every completion"
    if value == 0:
        why = "no right answer to learn from"
    elif value == 1:
        why = "every answer already right, nothing left to learn"
    else:
        why = "it cannot tell one completion from another, so it adds nothing to any advantage"
    return f"{friendly} reward was {value:.4g} on {scope} ({logs} logs in a row): {why}"


class TrainingAlarms(TrainerCallback):
    """Watch the trainer's logs; on an alarm, log it and write `SUSPECT.json` into the run's `output_dir`."""

    def __init__(self, config: AlarmConfig | None = None):
        self.config = config or AlarmConfig()
        self.state = AlarmState()
        self.alarms: list[dict] = []
        self.last_scored_step = 0  # the step of the last log that carried rewards (GRPO flushes its scores there)

    # --- rules ------------------------------------------------------------------------------------------------------
    def check(self, logs: dict, step: int, completions: int | None = None) -> list[dict]:
        """The alarms one log raises (pure: no file written); updates the history. `completions`: how many GRPO
        scored in the steps this log covers (`logged_completions`; None: unknown, the reasons then give no count)."""
        c, s = self.config, self.state
        out = self._constant_rewards(logs, step, completions)
        # A log with rewards is a policy-gradient run (GRPO): its loss is no cross-entropy (0 on equal rewards).
        watch_loss = c.watch_loss and not any(k == "reward" or k.startswith("rewards/") for k in logs)
        for key, raw in logs.items():
            try:
                value = float(raw)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(value):
                continue
            past = s.history.setdefault(key, [])
            recent = past[-c.window :]
            warm = len(past) >= c.warmup_logs
            if key == "loss" and watch_loss:
                if value < c.loss_floor:
                    out.append(
                        self._alarm(
                            "loss_near_zero",
                            key,
                            step,
                            value,
                            f"training loss {value:.4g} < {c.loss_floor} (toward zero: a ten-class answer "
                            "learned perfectly, most likely a shortcut)",
                        )
                    )
                elif warm and recent and value < c.loss_drop * _median(recent):
                    out.append(
                        self._alarm(
                            "loss_abrupt_fall",
                            key,
                            step,
                            value,
                            f"training loss fell abruptly to {value:.4g} from a median "
                            f"{_median(recent):.4g} over the last {len(recent)} logs",
                        )
                    )
            elif any(k in key for k in c.jump_keys) and "std" not in key and warm and recent:
                if value - _median(recent) > c.jump:
                    out.append(
                        self._alarm(
                            "jump",
                            key,
                            step,
                            value,
                            f"{key} jumped to {value:.4g} from a median {_median(recent):.4g} over the "
                            f"last {len(recent)} logs",
                        )
                    )
            if key == "frac_reward_zero_std":
                if value < c.zero_std_low:
                    s.zero_std_was_low = True
                s.zero_std_run = s.zero_std_run + 1 if value >= c.zero_std_high else 0
                if s.zero_std_was_low and s.zero_std_run >= c.zero_std_patience:
                    out.append(
                        self._alarm(
                            "reward_variance_collapse",
                            key,
                            step,
                            value,
                            f"reward variance collapsed: {key} >= {c.zero_std_high} for "
                            f"{s.zero_std_run} logs after being < {c.zero_std_low} (every completion "
                            "of a group scores the same)",
                        )
                    )
                # TRL logs the mean over the logging window: 1 means every group of every step in it was zero-std.
                s.no_signal_run = s.no_signal_run + 1 if value >= 1.0 else 0
                if c.no_signal_logs and s.no_signal_run >= c.no_signal_logs:
                    out.append(
                        self._alarm(
                            "no_reward_signal",
                            key,
                            step,
                            value,
                            f"no learning signal: {key} = 1 for {s.no_signal_run} consecutive logs "
                            "(every completion of every group scored the same, so every advantage "
                            "is 0 and the policy cannot learn from these rewards)",
                        )
                    )
            if key == ZOOM_RATE_KEY and c.zoom_cap:
                out += self._zoom_rules(key, step, value)
            if key == "entropy" and past:
                first = past[0]
                if value < c.entropy_floor or (first > 0 and value < c.entropy_fraction * first):
                    out.append(
                        self._alarm(
                            "entropy_collapse",
                            key,
                            step,
                            value,
                            f"entropy collapsed to {value:.4g} (first logged {first:.4g})",
                        )
                    )
            past.append(value)
        return [a for a in out if a is not None]

    def _constant_rewards(self, logs: dict, step: int, completions: int | None) -> list[dict | None]:
        """`constant_reward`: per reward function, the run of logs in which it gave every completion one value."""
        c, runs = self.config, self.state.constant
        out = []
        for name in reward_names(logs):
            if name in c.constant_reward_skip:
                continue
            key = f"{REWARD_PREFIX}{name}/mean"
            mean, std = _number(logs[key]), _number(logs.get(f"{REWARD_PREFIX}{name}/std"))
            if mean is None or std is None or std > CONSTANT_TOL:  # TRL logs None when it scored nothing
                runs.pop(name, None)
                continue
            value, n, total = runs.get(name, (mean, 0, 0))
            if abs(value - mean) > CONSTANT_TOL:  # constant within each log, but not the same value: a new run
                value, n, total = mean, 0, 0
            total = None if total is None or completions is None else total + completions
            runs[name] = (value, n + 1, total)
            if c.constant_reward_logs and n + 1 >= c.constant_reward_logs:
                reason = constant_reward_reason(name, value, n + 1, total)
                out.append(self._alarm("constant_reward", key, step, value, reason))
        return out

    def _zoom_rules(self, key: str, step: int, value: float) -> list[dict | None]:
        c, s = self.config, self.state
        s.zoomed = s.zoomed or value > 0
        s.no_zoom_run = s.no_zoom_run + 1 if value == 0 else 0
        s.at_cap_run = s.at_cap_run + 1 if value >= c.zoom_cap else 0
        out = []
        if s.zoomed and s.no_zoom_run >= c.zoom_patience:
            out.append(
                self._alarm(
                    "zoom_rate_collapse",
                    key,
                    step,
                    value,
                    f"the zoom rate collapsed: no rollout called the tool for {s.no_zoom_run} logs after some did "
                    "(the run measures no zoom; a correctness-gated zoom_bonus or a warm start on zoom episodes "
                    "keeps it)",
                )
            )
        if s.at_cap_run >= c.zoom_patience:
            out.append(
                self._alarm(
                    "zoom_always_cap",
                    key,
                    step,
                    value,
                    f"every episode zooms to the cap: {value:.3g} calls per rollout (cap {c.zoom_cap}) for "
                    f"{s.at_cap_run} logs (the cut-off episodes carry no answer; a zoom_cost per call prices it)",
                )
            )
        return out

    def _alarm(self, rule: str, key: str, step: int, value: float, reason: str) -> dict | None:
        if (rule, key) in self.state.fired:
            return None
        self.state.fired.add((rule, key))
        return {"rule": rule, "key": key, "step": int(step), "value": value, "reason": f"step {step}: {reason}"}

    # --- the callback -----------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self.last_scored_step = state.global_step  # a resumed run counts from its checkpoint

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        completions = None
        if reward_names(logs):  # TRL's GRPO log: the mean over every completion scored since its last log
            completions = logged_completions(args, state.global_step - self.last_scored_step)
            self.last_scored_step = state.global_step
        alarms = self.check(logs, state.global_step, completions)
        if not alarms:
            return
        self.alarms += alarms
        for alarm in alarms:
            logger.warning("astroreason alarm (%s): %s", alarm["rule"], alarm["reason"])
            if state.is_world_process_zero:
                mark_suspect(
                    args.output_dir,
                    alarm["rule"],
                    alarm["reason"],
                    key=alarm["key"],
                    step=alarm["step"],
                    value=alarm["value"],
                )
        if self.config.stop_on_alarm:
            control.should_training_stop = True
