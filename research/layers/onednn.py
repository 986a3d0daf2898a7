"""oneDNN's direct convolutions inside XLA programs on CPU: the "onednn" conv algorithm.

PyTorch's CPU convolutions are oneDNN's (Intel's deep-learning kernel library):
direct convolutions that never materialise im2col patches. XLA's CPU backend has
no fast convolution of its own (see `conv_algorithms`), so this module calls
oneDNN from inside the compiled program, through XLA's typed FFI, while XLA
keeps everything around the convolutions (fusions, the optimizer, the scan).

  * `conv(x, kernel, strides, pads, dilations, groups)`: same contract as every
    conv algorithm (NHWC, HWIO, explicit pads), float32 only. Its gradient is a
    custom VJP: oneDNN's backward-data and backward-weights primitives. Under
    `vmap` (vmapped trials) each trial's convolution runs in turn
    (`vmap_method="sequential"`), so a vmapped trial computes exactly what it
    computes alone.
  * `status()`: `(True, path)` once the handlers are built and registered, else
    `(False, reason)`. `conv_algorithms` uses "onednn" by default on CPU where
    it is available and "tiled" elsewhere.

Building. The handlers (`onednn_conv.cc`) are compiled on first use with the
C++ compiler (`$CXX`, else `g++`), against the XLA FFI headers shipped with
jaxlib and oneDNN from the pinned PyPI packages `onednn-cpu-gomp` and
`onednn-devel-cpu-gomp` (x86-64 Linux; GNU OpenMP threads). The library goes to
`$RESEARCH_NATIVE_CACHE`, else `~/.cache/research/native` (a temporary folder
where neither can be written), under a name hashed
from the source, the compiler command and the jaxlib and oneDNN versions, and is
written to a temporary name and renamed, so processes building at once (sweep
workers) do not see half a file. A build takes a few seconds, once per machine.

Threads. XLA runs independent custom calls side by side (a layer's backward-data
and backward-kernel calls), and each call starts its own OpenMP team, so each call
caps its team at `THREADS_ENV_VAR` (`$RESEARCH_ONEDNN_THREADS`) where set, else at
cores / 2 (at least 1): two calls at once fill the machine without oversubscribing
it. The count is fixed per process (see `threads_per_call`).

Numbers. oneDNN's results are deterministic for a given CPU and thread count: it
splits the kernel-gradient reduction across threads in a fixed order. They differ
from "tiled" and "xla" in the last bits (float32 rounding), as those differ from
each other.

Why these wheels. oneDNN's maintained wheels (`onednn`/`onednn-devel` 2026.1.0)
are its SYCL build (CPU runtime SYCL, TBB threads): `onednn_conv.cc` builds
against them unchanged, but a CPU engine exists only through Intel's OpenCL CPU
runtime named in `OCL_ICD_FILENAMES` before the process starts ("could not create
an engine" otherwise), and they bring ~630 MB of dependencies (SYCL, OpenCL and
compiler runtimes) against the GNU OpenMP build's 39 MB. Measured with them: the
digits quick start's params hash identical. So the pinned `onednn-cpu-gomp`
2023.2.0 (oneDNN 3.2) stays.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import platform
import shlex
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]
Pair = tuple[int, int]

SOURCE = Path(__file__).with_name("onednn_conv.cc")
CACHE_ENV_VAR = "RESEARCH_NATIVE_CACHE"
THREADS_ENV_VAR = "RESEARCH_ONEDNN_THREADS"  # read by onednn_conv.cc: OpenMP threads per call
CONCURRENT_CALLS = 2  # onednn_conv.cc's kConcurrentCalls
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "research", "native")
LIBRARY_PACKAGE = "onednn-cpu-gomp"  # libdnnl.so.3
HEADERS_PACKAGE = "onednn-devel-cpu-gomp"  # oneapi/dnnl/dnnl.hpp
TARGETS = {  # FFI target name -> handler symbol in the built library
    "forward": "ResearchOnednnConvForward",
    "backward_input": "ResearchOnednnConvBackwardInput",
    "backward_kernel": "ResearchOnednnConvBackwardKernel",
}


def _ffi_name(target: str) -> str:
    """The FFI target name under which `TARGETS[target]` is registered."""
    return f"research_onednn_conv_{target}"


class OnednnUnavailable(RuntimeError):
    """The oneDNN handlers cannot be built or loaded here; the message says why."""


def _package_file(package: str, suffix: str) -> Path:
    """The installed file of `package` whose path ends with `suffix`."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise OnednnUnavailable(
            f"package {package} is not installed (pip install -r requirements.txt)"
        ) from None
    for file in dist.files or ():
        if str(file).replace("\\", "/").endswith(suffix):
            return Path(dist.locate_file(file)).resolve()
    raise OnednnUnavailable(f"package {package} has no file {suffix}")


def _build_command() -> list[str]:
    """The compiler command, all but its `-o OUTPUT` (which `build` appends)."""
    library = _package_file(LIBRARY_PACKAGE, "/libdnnl.so.3")
    header = _package_file(HEADERS_PACKAGE, "/oneapi/dnnl/dnnl.hpp")
    compiler = shlex.split(os.environ.get("CXX", "g++"))
    return [
        *compiler,
        "-O2",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-w",  # the FFI headers' own warnings are not ours to fix
        "-fopenmp",  # omp_set_num_threads: the same libgomp oneDNN uses
        str(SOURCE),
        f"-I{jax.ffi.include_dir()}",
        f"-I{header.parents[2]}",
        str(library),
        f"-Wl,-rpath,{library.parent}",
    ]


def _cache_dir() -> Path:
    """`$RESEARCH_NATIVE_CACHE`, else `~/.cache/research/native`; a temporary folder
    of this user's where that cannot be written (a read-only home). Created."""
    preferred = Path(os.path.expanduser(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR))
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"research-native-{os.getuid()}"
    fallback.mkdir(exist_ok=True)
    return fallback


def build() -> Path:
    """The built handler library, compiled now unless an identical build is cached."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise OnednnUnavailable(
            f"the pinned oneDNN packages are for x86-64 Linux, not "
            f"{platform.system()} {platform.machine()}"
        )
    command = _build_command()
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update("\0".join(command).encode())
    for package in ("jaxlib", LIBRARY_PACKAGE, HEADERS_PACKAGE):
        key.update(importlib.metadata.version(package).encode())
    target = _cache_dir() / f"onednn_conv-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / target.name
        try:
            result = subprocess.run(
                [*command, "-o", str(partial)], capture_output=True, text=True, timeout=600
            )
        except FileNotFoundError as e:
            raise OnednnUnavailable(f"no C++ compiler ({e.filename}); set CXX") from None
        except subprocess.TimeoutExpired:
            raise OnednnUnavailable(f"building {SOURCE.name} took over 600 s") from None
        if result.returncode != 0:
            raise OnednnUnavailable(
                f"building {SOURCE.name} failed: {result.stderr.strip()[-2000:]}"
            )
        os.replace(partial, target)  # atomic: a concurrent build's file is identical
    return target


@functools.cache
def _load() -> tuple[bool, str]:
    try:
        path = build()
        library = ctypes.CDLL(str(path))
        for name, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(
                _ffi_name(name),
                jax.ffi.pycapsule(getattr(library, symbol)),
                platform="cpu",
            )
    except (OnednnUnavailable, OSError) as e:
        return False, str(e)
    return True, str(path)


def status() -> tuple[bool, str]:
    """(True, library path) when the oneDNN handlers are registered, else (False, why)."""
    return _load()


def threads_per_call() -> int:
    """The OpenMP team size each call uses in this process (as onednn_conv.cc computes it)."""
    set_ = os.environ.get(THREADS_ENV_VAR, "")
    if set_.isdigit() and int(set_) > 0:
        return int(set_)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // CONCURRENT_CALLS)


def available() -> bool:
    return status()[0]


def supports(x, kernel) -> bool:
    """Whether `conv` takes these operands: float32 on CPU (built or not: see `status`)."""
    return jax.default_backend() == "cpu" and x.dtype == kernel.dtype == jnp.float32


def _call(target: str, out, *operands, strides, pads, dilations, groups):
    i64 = functools.partial(np.asarray, dtype=np.int64)
    return jax.ffi.ffi_call(_ffi_name(target), out, vmap_method="sequential")(
        *operands,
        strides=i64(strides),
        dilations=i64(dilations),
        pad_lo=i64([lo for lo, _ in pads]),
        pad_hi=i64([hi for _, hi in pads]),
        groups=np.int64(groups),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, kernel, strides: Pair, pads: Pads, dilations: Pair, groups: int):
    # The output's shape and dtype, as XLA's own convolution would give them.
    out = jax.eval_shape(
        functools.partial(
            lax.conv_general_dilated,
            window_strides=strides,
            padding=pads,
            rhs_dilation=dilations,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
        ),
        x,
        kernel,
    )
    geometry = dict(strides=strides, pads=pads, dilations=dilations, groups=groups)
    return _call("forward", out, x, kernel, **geometry)


def _conv_fwd(x, kernel, strides, pads, dilations, groups):
    return _conv(x, kernel, strides, pads, dilations, groups), (x, kernel)


def _conv_bwd(strides, pads, dilations, groups, residuals, dy):
    x, kernel = residuals
    geometry = dict(strides=strides, pads=pads, dilations=dilations, groups=groups)
    dx = _call("backward_input", jax.ShapeDtypeStruct(x.shape, x.dtype), dy, kernel, **geometry)
    dk = _call(
        "backward_kernel", jax.ShapeDtypeStruct(kernel.shape, kernel.dtype), x, dy, **geometry
    )
    return dx, dk


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv(x, kernel, strides: Pair, pads: Pads, dilations: Pair, groups: int = 1):
    """oneDNN's convolution of NHWC `x` with the HWIO `kernel`; raises where unsupported."""
    ok, why = status()
    if not ok:
        raise OnednnUnavailable(f"conv algorithm 'onednn' is unavailable here: {why}")
    if not supports(x, kernel):
        raise ValueError(
            f"conv algorithm 'onednn' takes float32 on CPU; got {x.dtype} x {kernel.dtype} "
            f"on {jax.default_backend()}"
        )
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    return _conv(x, kernel, tuple(map(int, strides)), pads, tuple(map(int, dilations)), groups)
