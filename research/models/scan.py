"""Runs of identical blocks as one `nn.scan`, and the converters between the two layouts.

Compile time grows with the number of operations XLA has to optimise and emit,
so a run of `k` identical blocks (same class, fields and input shape: ResNet's
blocks after a stage's first, Xception's middle flow) compiles faster as one
`lax.scan` over a block whose parameters are stacked on a leading axis of size
`k`: XLA compiles the block once (and its gradient once) instead of `k` times.
A model opts in with its `scan_blocks` field (default False); the computation
is the same function, but the parameter layout differs:

  default (`scan_blocks=False`)          scanned (`scan_blocks=True`)
  stage3_block2/conv1/kernel (3,3,C,C)   stage3_blocks2to6/conv1/kernel (5,3,3,C,C)
  ...                                    (one entry per group, the blocks stacked
  stage3_block6/conv1/kernel (3,3,C,C)    in network order on axis 0)

Every collection (`params`, `batch_stats`) is stacked the same way. A scanned
group is named `{prefix}blocks{first}to{last}`, which no regex for one block
(`stage3_block2`, `block5`) matches. A model with scannable runs has a method
`scan_groups()`: group name -> member names, in network order (the same for both
layouts; `{}` where no run has two blocks). `stack_blocks` / `unstack_blocks`
convert one collection's tree between the layouts, exactly (the same arrays,
stacked or sliced), so whatever works on the default layout (pretrained
imports, `transfer.load_pretrained`, freezing rules written for block names,
checkpoints of default runs) works on a scanned model through them:

    groups = models.scan_groups(model)
    scanned = {col: models.stack_blocks(tree, groups) for col, tree in variables.items()}
    default = {col: models.unstack_blocks(tree, groups) for col, tree in scanned.items()}

What differs in a scanned model, by construction:
  * its own `init` draws other random numbers than the default model's (the
    scan splits the init key per block), so a scanned run is not bit-identical
    to a default one with the same seed; `stack_blocks` of the default model's
    init gives the same start;
  * a group is one module: freezing rules, `transfer.strategy` layer counts and
    method interceptors (e.g. frozen-BatchNorm policies) see
    `stage3_blocks2to6/conv1`, not `stage3_block4/conv1`, so they treat the
    group's blocks alike;
  * the blocks' sown features keep their names (`stage3_block4_out`, sliced from
    the scan's outputs, only when the "features" collection is mutable).

Measured on CPU (`scripts/bench.py --mode compile`, 28x28x1, batch 32, 2 idle
cores, one fresh process each): the HLO shrinks (ResNet-34 1,342k -> 830k
characters) but the time to the first step does not: ResNet-18 11.2 -> 11.3 s,
ResNet-34 15.8 -> 15.2 s, ResNet-50 19.0 -> 22.5 s, Xception 16.2 -> 17.9 s,
and the step is 10-30 % slower (the scan's loop is a barrier to XLA's fusion).
On a CPU, XLA's time goes into per-fusion LLVM code generation, which the loop
does not remove. Hence off by default; it is here for deeper stacks and for
GPU/TPU compilers, where a scan over blocks is the usual cure (unmeasured here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# The collections a scanned block stacks, and the random streams split per block.
SCANNED_COLLECTIONS = ("params", "batch_stats")
SPLIT_RNGS = ("params", "dropout")


def group_name(prefix: str, first: int, last: int) -> str:
    """The scanned module of blocks `first..last`: e.g. `stage3_blocks2to6`."""
    return f"{prefix}blocks{first}to{last}"


def repeat(block: nn.Module, x: jax.Array, length: int, *, train: bool, keep_outputs: bool):
    """Applies `block` `length` times in a row as one `nn.scan`; parameters stacked on axis 0.

    Args:
      block: the block module, named as the group (`group_name`), constructed
        inside the caller's compact `__call__`; called as `block(x, train=train)`
        and returning an array of `x`'s shape.
      x: the first block's input.
      length: blocks in the run.
      train: passed to every block.
      keep_outputs: also return every block's output, stacked `(length, *x.shape)`
        (for sown features); else None.

    Returns:
      `(y, outputs)`: the last block's output, and the stacked outputs or None.
    """

    def body(module, carry, _):
        y = module(carry, train=train)
        return y, (y if keep_outputs else None)

    scan = nn.scan(
        body,
        variable_axes=dict.fromkeys(SCANNED_COLLECTIONS, 0),
        split_rngs=dict.fromkeys(SPLIT_RNGS, True),
        length=length,
    )
    return scan(block, x, None)


def scan_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Group name -> its blocks' names in the default layout, for `model`'s configuration.

    `{}` for a model without a `scan_groups` method (no runs of identical blocks).
    """
    method = getattr(model, "scan_groups", None)
    return {} if method is None else dict(method())


def stack_blocks(tree: Mapping[str, Any], groups: Mapping[str, Sequence[str]]) -> dict:
    """One collection (`params` or `batch_stats`) from the default to the scanned layout.

    Each group's member subtrees are stacked leaf by leaf on a new leading axis
    and put under the group's name, where the first member stood (the order of
    the other keys is kept: Flax's creation order is network order).

    Args:
      tree: module name -> subtree, as in `variables["params"]`.
      groups: `scan_groups(model)`.

    Raises:
      ValueError: a member is missing, or the members' trees or shapes differ.
    """
    first = {members[0]: name for name, members in groups.items()}
    grouped = {m for members in groups.values() for m in members}
    for name, members in groups.items():
        missing = [m for m in members if m not in tree]
        if missing and len(missing) < len(members):
            raise ValueError(f"stack_blocks: group {name!r} lacks {missing} (has {list(tree)})")
    out = {}
    for key, value in tree.items():
        if key in first:
            name = first[key]
            out[name] = _stack(name, [tree[m] for m in groups[name]], groups[name])
        elif key not in grouped:
            out[key] = value
    return out


def unstack_blocks(tree: Mapping[str, Any], groups: Mapping[str, Sequence[str]]) -> dict:
    """The inverse of `stack_blocks`: each group's stacked subtree sliced back into its blocks.

    Raises:
      ValueError: a group's leading axis is not its number of members.
    """
    out = {}
    for key, value in tree.items():
        members = groups.get(key)
        if members is None:
            out[key] = value
            continue
        sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree_util.tree_leaves(value)}
        if sizes != {len(members)}:
            raise ValueError(
                f"unstack_blocks: group {key!r} has {len(members)} blocks {list(members)} but "
                f"leading axes {sorted(sizes, key=str)}"
            )
        for i, member in enumerate(members):
            out[member] = jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], value)
    return out


def _stack(name: str, subtrees: list, members: Sequence[str]):
    structures = {jax.tree_util.tree_structure(t) for t in subtrees}
    if len(structures) != 1:
        raise ValueError(f"stack_blocks: the blocks of group {name!r} {list(members)} differ")
    shapes = [[jnp.shape(leaf) for leaf in jax.tree_util.tree_leaves(t)] for t in subtrees]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(
            f"stack_blocks: the blocks of group {name!r} {list(members)} have different shapes"
        )
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *subtrees)
