"""Freezing: which parameters train, which stay fixed, which train at a lower rate.

Rules are an ordered list of `(regex, rule)` over parameter paths such as
`conv1/kernel` or `stage2_block1/conv2/kernel` (module names joined by "/"):

  * the first pattern that matches a path (`re.search`) decides its rule;
  * every parameter must be matched (a final `(".*", "train")` is the usual catch-all);
  * rules are "train", "freeze", "scale:F" (train with the learning rate times F),
    "grad_scale:F" (the gradient times F before the optimizer: with the SGD family, the
    learning rate of the data term times F while the weight-decay step stays as it is,
    airbench94's `bias_scaler`; adaptive optimizers are nearly invariant to it) or
    "freeze_after:E" (train for E epochs, then frozen: airbench94's whitening bias);
  * every decision is reported, so a run's log says exactly what was frozen.

`freeze(tx, params, rules)` wraps an optimizer with `optax.multi_transform`: frozen
parameters get `optax.set_to_zero()`, so their *final* update is exactly zero and
no momentum, Adam moment or weight decay can move them (they also hold no
optimizer state). Scaled groups get the optimizer followed by `optax.scale(F)`;
"grad_scale:F" groups get `optax.scale(F)` before it; "freeze_after:E" groups the
optimizer followed by a factor that is 1 for the first round(E × steps per epoch)
updates and 0 after (their final update is then exactly zero, as for "freeze").

BatchNorm policy (`batch_norm_interceptor`): by default a BatchNorm layer whose
scale and bias are frozen normalises with its running averages and does not
update them, as if in evaluation mode; the alternative "update" keeps batch
statistics (and their running averages) moving in frozen layers.

Named strategies on top (`strategy_rules`): scratch, linear_probe,
freeze_first_n, finetune, finetune_lower_lr.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

log = logging.getLogger(__name__)

Rule = tuple[str, str]

STRATEGIES = ("scratch", "linear_probe", "freeze_first_n", "finetune", "finetune_lower_lr")
BATCH_NORM_POLICIES = ("frozen", "update")


def param_path(path) -> str:
    """`("stage1_block1", "conv1", "kernel")`-style key path -> "stage1_block1/conv1/kernel"."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


RULE_FORMS = "'train', 'freeze', 'scale:F', 'grad_scale:F' (F > 0) or 'freeze_after:E' (E >= 0)"


def _check_rule(rule: str) -> str:
    if rule in ("train", "freeze"):
        return rule
    match = re.fullmatch(r"(scale|grad_scale|freeze_after):(.+)", str(rule))
    if match:
        try:
            number = float(match.group(2))
        except ValueError:
            number = math.nan
        low_ok = number >= 0 if match.group(1) == "freeze_after" else number > 0
        if low_ok and math.isfinite(number):
            return rule
    raise ValueError(f"transfer.rules: rule {rule!r} must be {RULE_FORMS}")


@dataclasses.dataclass(frozen=True)
class Decision:
    path: str
    rule: str
    pattern: str


def label_params(params: Mapping[str, Any], rules: Sequence[Rule]) -> tuple[Any, list[Decision]]:
    """Labels every parameter with its rule: first match wins, every path must match.

    Returns:
      A pytree of rule strings shaped like `params`, and the decisions in
      flattened-path order.

    Raises:
      ValueError: a bad pattern or rule, or parameters no pattern matches (listed).
    """
    compiled = []
    for pattern, rule in rules:
        try:
            compiled.append((re.compile(pattern), pattern, _check_rule(rule)))
        except re.error as err:
            raise ValueError(f"freezing pattern {pattern!r} is not a valid regex: {err}") from None
    decisions, uncovered = [], []

    def decide(path, _):
        name = param_path(path)
        for regex, pattern, rule in compiled:
            if regex.search(name):
                decisions.append(Decision(name, rule, pattern))
                return rule
        uncovered.append(name)
        return "train"

    labels = jax.tree_util.tree_map_with_path(decide, params)
    if uncovered:
        raise ValueError(
            f"freezing rules {list(rules)} match no rule for {len(uncovered)} parameter(s): "
            f"{uncovered[:8]}{' ...' if len(uncovered) > 8 else ''}; add a catch-all "
            f"('.*', 'train') at the end"
        )
    for d in decisions:
        log.info("freeze: %-50s %-12s (pattern %r)", d.path, d.rule, d.pattern)
    return labels, decisions


def freeze(
    tx: optax.GradientTransformation,
    params: Mapping[str, Any],
    rules: Sequence[Rule],
    *,
    steps_per_epoch: int | None = None,
) -> tuple[optax.GradientTransformation, list[Decision]]:
    """Wraps `tx` so that parameters follow `rules` (see the module docstring).

    `steps_per_epoch` turns the epochs of "freeze_after:E" rules into updates.
    """
    labels, decisions = label_params(params, rules)
    used = {d.rule for d in decisions}
    transforms: dict[str, optax.GradientTransformation] = {}
    for rule in used:
        kind, _, number = rule.partition(":")
        if rule == "train":
            transforms[rule] = tx
        elif rule == "freeze":
            transforms[rule] = optax.set_to_zero()
        elif kind == "grad_scale":
            transforms[rule] = optax.chain(optax.scale(float(number)), tx)
        elif kind == "freeze_after":
            if not steps_per_epoch:
                raise ValueError(f"transfer.rules: {rule!r} needs the run's steps per epoch")
            steps = round(float(number) * steps_per_epoch)
            factor = optax.scale_by_schedule(lambda count, n=steps: jnp.where(count < n, 1.0, 0.0))
            transforms[rule] = optax.chain(tx, factor)
        else:
            transforms[rule] = optax.chain(tx, optax.scale(float(number)))
    return optax.multi_transform(transforms, labels), decisions


def frozen_modules(decisions: Sequence[Decision]) -> set[str]:
    """Module paths all of whose parameters are frozen (e.g. {"conv1", "bn1"})."""
    by_module: dict[str, set[str]] = {}
    for d in decisions:
        module = d.path.rsplit("/", 1)[0] if "/" in d.path else ""
        by_module.setdefault(module, set()).add(d.rule)
    return {m for m, rules in by_module.items() if rules == {"freeze"}}


def batch_norm_interceptor(frozen: set[str], policy: str = "frozen") -> Callable | None:
    """A Flax method interceptor that runs frozen BatchNorm layers on running averages.

    Use as `with nn.intercept_methods(interceptor): model.apply(...)`. Returns
    None when nothing needs intercepting (policy "update", or no frozen layers).
    """
    if policy not in BATCH_NORM_POLICIES:
        raise ValueError(f"transfer.batch_norm={policy!r} must be one of {BATCH_NORM_POLICIES}")
    if policy == "update" or not frozen:
        return None

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (
            isinstance(module, nn.BatchNorm)
            and context.method_name == "__call__"
            and "/".join(module.path) in frozen
        ):
            if module.use_running_average is None:  # given at call time
                return next_fun(*args, **{**kwargs, "use_running_average": True})
            # Given to the constructor (the usual `BatchNorm(use_running_average=not train)`):
            # Flax refuses it twice, so override the attribute for this one call. The module
            # instance is rebuilt by its parent on every apply, so nothing outlives the call.
            old = module.use_running_average
            object.__setattr__(module, "use_running_average", True)
            try:
                return next_fun(*args, **kwargs)
            finally:
                object.__setattr__(module, "use_running_average", old)
        return next_fun(*args, **kwargs)

    return interceptor


def conv_layer_paths(params: Mapping[str, Any]) -> list[str]:
    """Module paths of the convolution layers (those with a 4-D `kernel`), in network order.

    Flax keeps parameters in creation order, which is the order of the forward
    pass, so "the first N convolutional layers" are the first N of this list. A
    separable convolution counts as two layers (its depthwise and pointwise parts).
    """
    paths: list[str] = []

    def walk(tree: Mapping[str, Any], prefix: str) -> None:
        for key, value in tree.items():  # dict order = creation order (not sorted)
            if isinstance(value, Mapping):
                kernel = value.get("kernel")
                if kernel is not None and not isinstance(kernel, Mapping) and kernel.ndim == 4:
                    paths.append(f"{prefix}{key}")
                walk(value, f"{prefix}{key}/")

    walk(params, "")
    return paths


def strategy_rules(
    strategy: str,
    params: Mapping[str, Any],
    *,
    head: str = "head",
    n: int = 0,
    backbone_scale: float = 0.1,
) -> list[Rule]:
    """The rules of a named transfer strategy for a model's `params`.

    Args:
      strategy: scratch | linear_probe | freeze_first_n | finetune | finetune_lower_lr.
      params: the model's parameters (to find the convolution layers, in order).
      head: the name of the classification layer (the zoo's models call it "head").
      n: for freeze_first_n, how many convolution layers to freeze, in network order.
      backbone_scale: for finetune_lower_lr, the backbone's learning-rate fraction.
    """
    head_pattern = rf"(^|/){re.escape(head)}/"
    if strategy in ("scratch", "finetune"):
        return [(".*", "train")]
    if strategy == "linear_probe":
        return [(head_pattern, "train"), (".*", "freeze")]
    if strategy == "finetune_lower_lr":
        if not 0 < backbone_scale <= 1:
            raise ValueError(f"transfer.backbone_lr_scale={backbone_scale} must be in (0, 1]")
        return [(head_pattern, "train"), (".*", f"scale:{backbone_scale}")]
    if strategy == "freeze_first_n":
        convs = conv_layer_paths(params)
        if not 0 <= n <= len(convs):
            raise ValueError(
                f"transfer.n={n} must be in [0, {len(convs)}]: the model has {len(convs)} "
                f"convolution layers ({', '.join(convs[:6])}{' ...' if len(convs) > 6 else ''})"
            )
        return [(rf"^{re.escape(p)}/", "freeze") for p in convs[:n]] + [(".*", "train")]
    raise ValueError(f"transfer.strategy={strategy!r} must be one of {', '.join(STRATEGIES)}")
