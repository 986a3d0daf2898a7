"""The form of a compiled program: its convolutions and scatters, read from StableHLO.

Trials at once (`jax.vmap` over a trial axis) are slow on GPU when the program
holds forms that XLA's GPU backend has no fast kernel for. They can be seen
without a GPU: `lower(fn, *args, platform="cuda")` lowers a function for CUDA
on any machine (`jax.jit(fn).trace(*args).lower(lowering_platforms=...)`), and
`form(text)` lists what matters in the StableHLO text:

  * every `stablehlo.convolution`: its feature and batch group counts, its
    operand shapes, window and dimension numbers, and its role. A convolution
    whose input has the minibatch in the feature position (lhs dimension
    numbers not starting with `b`, e.g. `[f, 0, 1, b]`) is a *kernel gradient*
    (autodiff's transpose of a convolution with respect to its kernel); the
    others are forward or input-gradient convolutions;
  * the counts of `select_and_scatter` (max pooling's gradient by
    `reduce_window`), `scatter` and `gather` ops.

`ProgramForm.slow_forms()` names what XLA's GPU backend runs badly:

  * a convolution with `batch_group_count > 1` (`jax.grad` of a grouped
    convolution gives one as its kernel gradient): cuDNN has no batch groups,
    so XLA's GPU backend rewrites it into a costlier form
    (`ConvolutionGroupConverter`);
  * a grouped kernel-gradient convolution (`feature_group_count > 1`): the form
    vmap gives a kernel gradient, with the trials as feature groups. XLA's GPU
    convolution rewriter matches a kernel gradient ("backward filter") only
    when it is ungrouped (`MatchBackwardFilter`: "grouped backward filters are
    mapped to batch grouped convolutions"), so this one runs as a *forward*
    convolution whose window is the whole output map;
  * `select_and_scatter`.

`research/layers/trial_conv.py` is the conv algorithm without the first two;
"reshape" max pooling (`pool_algorithms`) is the pool without the third.
"""

from __future__ import annotations

import collections
import dataclasses
import re

import jax

_CONV = re.compile(r"stablehlo\.convolution\(")
_DIMS = re.compile(r"dim_numbers = (\[[^\]]*\])x(\[[^\]]*\])->(\[[^\]]*\])")
_GROUPS = re.compile(r"(batch_group_count|feature_group_count) = (\d+)")
_TYPES = re.compile(r"\} : \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)")
_OP = re.compile(r"\bstablehlo\.(\w+)|\"stablehlo\.(\w+)\"")
COUNTED_OPS = ("select_and_scatter", "scatter", "gather", "reduce_window", "dot_general")


@dataclasses.dataclass(frozen=True)
class Convolution:
    """One `stablehlo.convolution` of a lowered program."""

    lhs: str  # the input's type, e.g. "tensor<16x28x28x3xf32>"
    rhs: str  # the kernel's (or, for a kernel gradient, the output gradient's) type
    out: str
    dims: str  # dimension numbers, e.g. "[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]"
    feature_group_count: int
    batch_group_count: int

    @property
    def role(self) -> str:
        """ "kernel gradient" or "forward/input gradient" (see the module docstring)."""
        return "forward/input gradient" if self.dims.startswith("[b") else "kernel gradient"

    @property
    def slow(self) -> str | None:
        """Why XLA's GPU backend runs this convolution badly, or None."""
        if self.batch_group_count > 1:
            return f"batch_group_count={self.batch_group_count}"
        if self.role == "kernel gradient" and self.feature_group_count > 1:
            return f"grouped kernel gradient (feature_group_count={self.feature_group_count})"
        return None


@dataclasses.dataclass(frozen=True)
class ProgramForm:
    """The convolutions of a lowered program and the counts of `COUNTED_OPS`."""

    convolutions: tuple[Convolution, ...]
    ops: dict[str, int]  # op name -> count, for COUNTED_OPS (0 where absent)

    def slow_forms(self) -> list[str]:
        """One line per slow form (module docstring); empty when there is none."""
        lines = [
            f"convolution {c.dims} {c.lhs}, {c.rhs}: {c.slow}" for c in self.convolutions if c.slow
        ]
        if self.ops["select_and_scatter"]:
            lines.append(f"select_and_scatter x {self.ops['select_and_scatter']}")
        return lines

    def table(self) -> str:
        """A markdown table of the convolutions, then the op counts (for reports)."""
        rows = [
            "| role | dims | lhs | rhs | feature groups | batch groups | slow |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in self.convolutions:
            rows.append(
                f"| {c.role} | `{c.dims}` | `{c.lhs}` | `{c.rhs}` | {c.feature_group_count} "
                f"| {c.batch_group_count} | {c.slow or ''} |"
            )
        counts = ", ".join(f"{name} {n}" for name, n in self.ops.items())
        return "\n".join(rows) + f"\n\nops: {counts}\n"


def lower(fn, *args, platform: str = "cuda") -> str:
    """StableHLO text of `fn(*args)` lowered for `platform` (no such device needed).

    `fn` is traced afresh (wrapped in a new function), so an enclosing
    `algorithm_choice.override` block takes effect even if `fn` was traced before.
    """

    def fresh(*a):
        return fn(*a)

    return jax.jit(fresh).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def form(text: str) -> ProgramForm:
    """The `ProgramForm` of a StableHLO module's text (`lower`'s result)."""
    convs = []
    for line in text.splitlines():
        if not _CONV.search(line):
            continue
        dims, types = _DIMS.search(line), _TYPES.search(line)
        if dims is None or types is None:
            raise ValueError(f"unrecognised stablehlo.convolution line: {line.strip()[:200]}")
        groups = dict(_GROUPS.findall(line))
        convs.append(
            Convolution(
                lhs=types.group(1),
                rhs=types.group(2),
                out=types.group(3),
                dims="x".join(dims.group(1, 2)) + "->" + dims.group(3),
                feature_group_count=int(groups.get("feature_group_count", 1)),
                batch_group_count=int(groups.get("batch_group_count", 1)),
            )
        )
    names = collections.Counter(a or b for a, b in _OP.findall(text))
    return ProgramForm(tuple(convs), {name: names[name] for name in COUNTED_OPS})
