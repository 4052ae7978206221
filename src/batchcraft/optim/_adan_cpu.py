"""Multi-tensor fused Adan on CPU: one C call updates every tensor of a (dtype, state dtype) bucket.

A step used to cost one compiled call per parameter tensor (guards, an OpenMP region, a Python
loop around it), so models with many tensors paid a fixed cost per tensor that could exceed the
update itself. Here the whole bucket is one call into a small C kernel that receives arrays of
pointers: it increments every ``step`` counter, computes each tensor's bias corrections, then runs
one parallel loop over fixed-size chunks of all tensors. The per-tensor cost left in Python is
collecting ``data_ptr()`` values, about a microsecond per tensor.

Per element it reads theta, g, m, v, n, g_prev and writes theta, m, v, n, g_prev (44 B per fp32
parameter, the minimum), with the maths in fp32 registers for fp16/bf16/fp32 storage and in fp64
for fp64 storage. The kernel is compiled on first use with the system C compiler (the same
requirement as ``torch.compile`` on CPU) and cached under ``$BATCHCRAFT_CACHE_DIR`` (default
``~/.cache/batchcraft``), keyed by the source, the compiler and the CPU; it links no library of
its own, so OpenMP is the runtime torch already loaded.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from batchcraft.utils.io import cache_dir

__all__ = ["CPU_KERNELS", "adan_cpu_update", "cpu_kernel_library", "has_compiler"]

_CHUNK = 16384  # elements per work item: 64 KiB of each fp32 stream, many items per thread

# One function per (parameter dtype, state dtype); the gradient has the parameter's dtype.
# Each is instantiated from the macro below with its load/store conversions and compute type.
CPU_KERNELS: dict[tuple[torch.dtype, torch.dtype], str] = {
    (torch.float32, torch.float32): "adan_f32_f32",
    (torch.float64, torch.float64): "adan_f64_f64",
    (torch.bfloat16, torch.bfloat16): "adan_bf16_bf16",
    (torch.bfloat16, torch.float32): "adan_bf16_f32",
    (torch.float16, torch.float16): "adan_f16_f16",
    (torch.float16, torch.float32): "adan_f16_f32",
    (torch.float32, torch.bfloat16): "adan_f32_bf16",  # low-precision state: less traffic
    (torch.float32, torch.float16): "adan_f32_f16",
}

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* bf16 <-> fp32 by bits; the store rounds to nearest even and keeps NaNs quiet. */
static inline float bf16_load(uint16_t h) {
    uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f;
}
static inline uint16_t bf16_store(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
#define SAME(x) (x)
#define F16_LOAD(x) ((float)(x))
#define F16_STORE(x) ((_Float16)(x))

/* Element j, given gj = c * g[j] and the gradient difference D = gj - g_prev[j]. */
#define ADAN_BODY(D, CT, PLOAD, PSTORE, SLOAD, SSTORE, SQRT)                                   \
    const CT d = (D);                                                                          \
    const CT mj = SLOAD(m[j]) * b1 + gj * ob1;                                                 \
    const CT vj = SLOAD(v[j]) * b2 + d * ob2;                                                  \
    const CT u = d * b2 + gj;                              /* Nesterov-corrected gradient */   \
    const CT nj = SLOAD(n[j]) * b3 + u * u * ob3;                                              \
    const CT den = SQRT(nj) * ib3 + eps;                                                       \
    const CT pj = (PLOAD(p[j]) * pre - (a1 * mj + a2 * vj) / den) * post;                      \
    p[j] = PSTORE(pj);                                                                         \
    m[j] = SSTORE(mj);                                                                         \
    v[j] = SSTORE(vj);                                                                         \
    n[j] = SSTORE(nj);                                                                         \
    prev[j] = SSTORE(gj);

/* One contiguous range of one tensor; restrict-qualified arguments let the compiler vectorise.
   s = {c, b1, b2, b3, 1 - b1, 1 - b2, 1 - b3, eps, pre, post, a1, a2, 1 / sqrt(bc3)}. */
#define DEFINE_RANGE(NAME, PT, ST, CT, PLOAD, PSTORE, SLOAD, SSTORE, SQRT)                      \
static void NAME##_range(int64_t len, int first, const CT *s, PT *restrict p,                  \
                         const PT *restrict g, ST *restrict m, ST *restrict v, ST *restrict n, \
                         ST *restrict prev) {                                                  \
    const CT c = s[0], b1 = s[1], b2 = s[2], b3 = s[3], ob1 = s[4], ob2 = s[5], ob3 = s[6];    \
    const CT eps = s[7], pre = s[8], post = s[9], a1 = s[10], a2 = s[11], ib3 = s[12];         \
    if (first) {  /* step 1 seeds g_prev = g: d = 0 exactly, whatever g_prev holds */         \
        for (int64_t j = 0; j < len; ++j) {                                                    \
            const CT gj = PLOAD(g[j]) * c;                                                     \
            ADAN_BODY((CT)0, CT, PLOAD, PSTORE, SLOAD, SSTORE, SQRT)                           \
        }                                                                                      \
    } else {                                                                                   \
        for (int64_t j = 0; j < len; ++j) {                                                    \
            const CT gj = PLOAD(g[j]) * c;                                                     \
            ADAN_BODY(gj - SLOAD(prev[j]), CT, PLOAD, PSTORE, SLOAD, SSTORE, SQRT)             \
        }                                                                                      \
    }                                                                                          \
}

/* hp = {lr, beta1, beta2, beta3, eps, weight_decay, no_prox, maximize, group_step (< 0: off)};
   clip: the 0-d clip factor as a double (NULL when off). Returns 0, or 1 if out of memory. */
#define DEFINE_ADAN(NAME, PT, ST, CT, PLOAD, PSTORE, SLOAD, SSTORE, SQRT)                       \
DEFINE_RANGE(NAME, PT, ST, CT, PLOAD, PSTORE, SLOAD, SSTORE, SQRT)                              \
int NAME(int64_t nt, const int64_t *numel, void *const *P, void *const *G, void *const *M,     \
         void *const *V, void *const *N, void *const *PREV, float *const *STEP,                \
         const double *hp, const double *clip, int nthreads) {                                 \
    const double lr = hp[0], b1 = hp[1], b2 = hp[2], b3 = hp[3], eps = hp[4], wd = hp[5];      \
    const int no_prox = hp[6] != 0.0, maximize = hp[7] != 0.0;                                 \
    const double group_step = hp[8];                                                           \
    const size_t cnt = (size_t)(nt > 0 ? nt : 1);                                              \
    CT *coef = (CT *)malloc(sizeof(CT) * 13 * cnt);                                            \
    int64_t *first_chunk = (int64_t *)malloc(sizeof(int64_t) * (cnt + 1));                     \
    char *first = (char *)malloc(cnt);                                                         \
    if (!coef || !first_chunk || !first) {                                                     \
        free(coef); free(first_chunk); free(first); return 1;                                  \
    }                                                                                          \
    first_chunk[0] = 0;                                                                        \
    for (int64_t i = 0; i < nt; ++i) {  /* steps and bias corrections, once per tensor */      \
        first[i] = *STEP[i] == 0.0f;                                                           \
        *STEP[i] += 1.0f;                                                                      \
        const double k = group_step >= 0 ? group_step : (double)*STEP[i];                     \
        const double bc1 = 1.0 - pow(b1, k), bc2 = 1.0 - pow(b2, k), bc3 = 1.0 - pow(b3, k); \
        CT *s = coef + 13 * i;                                                                 \
        s[0] = (CT)((clip ? clip[0] : 1.0) * (maximize ? -1.0 : 1.0));                         \
        s[1] = (CT)b1; s[2] = (CT)b2; s[3] = (CT)b3;                                           \
        s[4] = (CT)(1.0 - b1); s[5] = (CT)(1.0 - b2); s[6] = (CT)(1.0 - b3);                   \
        s[7] = (CT)eps;                                                                        \
        s[8] = (CT)(no_prox ? 1.0 - lr * wd : 1.0);                                            \
        s[9] = (CT)(no_prox ? 1.0 : 1.0 / (1.0 + lr * wd));                                    \
        s[10] = (CT)(lr / bc1); s[11] = (CT)(lr * b2 / bc2); s[12] = (CT)(1.0 / sqrt(bc3));   \
        first_chunk[i + 1] = first_chunk[i] + (numel[i] + CHUNK - 1) / CHUNK;                  \
    }                                                                                          \
    const int64_t nchunks = first_chunk[nt];                                                   \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1)")       \
    for (int64_t ch = 0; ch < nchunks; ++ch) {                                                 \
        int64_t lo = 0, hi = nt;  /* the tensor i holding chunk ch: first_chunk[i] <= ch */    \
        while (hi - lo > 1) {                                                                  \
            const int64_t mid = (lo + hi) / 2;                                                 \
            if (first_chunk[mid] <= ch) lo = mid; else hi = mid;                               \
        }                                                                                      \
        const int64_t i = lo, start = (ch - first_chunk[i]) * CHUNK;                           \
        const int64_t len = start + CHUNK < numel[i] ? CHUNK : numel[i] - start;               \
        NAME##_range(len, first[i], coef + 13 * i, (PT *)P[i] + start,                         \
                     (const PT *)G[i] + start, (ST *)M[i] + start, (ST *)V[i] + start,         \
                     (ST *)N[i] + start, (ST *)PREV[i] + start);                               \
    }                                                                                          \
    free(coef); free(first_chunk); free(first);                                                \
    return 0;                                                                                  \
}

DEFINE_ADAN(adan_f32_f32, float, float, float, SAME, SAME, SAME, SAME, sqrtf)
DEFINE_ADAN(adan_f64_f64, double, double, double, SAME, SAME, SAME, SAME, sqrt)
DEFINE_ADAN(adan_bf16_bf16, uint16_t, uint16_t, float, bf16_load, bf16_store, bf16_load,
            bf16_store, sqrtf)
DEFINE_ADAN(adan_bf16_f32, uint16_t, float, float, bf16_load, bf16_store, SAME, SAME, sqrtf)
DEFINE_ADAN(adan_f32_bf16, float, uint16_t, float, SAME, SAME, bf16_load, bf16_store, sqrtf)
#ifdef __FLT16_MAX__  /* fp16 needs the compiler's _Float16 (GCC >= 12, clang >= 15) */
DEFINE_ADAN(adan_f16_f16, _Float16, _Float16, float, F16_LOAD, F16_STORE, F16_LOAD, F16_STORE,
            sqrtf)
DEFINE_ADAN(adan_f16_f32, _Float16, float, float, F16_LOAD, F16_STORE, SAME, SAME, sqrtf)
DEFINE_ADAN(adan_f32_f16, float, _Float16, float, SAME, SAME, F16_LOAD, F16_STORE, sqrtf)
#endif
"""


def _cpu_id() -> str:
    """What the compiled code depends on: the architecture and the CPU's instruction sets."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {flags}"


def has_compiler() -> bool:
    """Whether a C compiler is on hand to build the kernel (``$CC``, cc, gcc or clang)."""
    return _find_compiler() is not None


def _find_compiler() -> str | None:
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _compiler() -> str:
    cc = _find_compiler()
    if not cc:
        raise RuntimeError(
            "fused Adan on CPU compiles a small C kernel and found no C compiler (cc, gcc or "
            "clang, or $CC); install one or use foreach=True"
        )
    return cc


def _build(cc: str, out: Path) -> None:
    """Compile the kernel into ``out``; without OpenMP or ``-march=native`` if the compiler refuses."""
    src = out.with_suffix(".c")
    src.write_text(f"#define CHUNK {_CHUNK}\n{_SOURCE}", encoding="utf-8")
    base = [cc, "-O3", "-std=c11", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
    errors = []
    for extra in (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], []):
        tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp.so")
        cmd = [*base, *extra, str(src), "-o", str(tmp), "-lm"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode == 0:
            os.replace(tmp, out)  # atomic: a concurrent build never sees half a library
            return
        errors.append(f"{' '.join(cmd)}:\n{res.stderr.strip()[:1500]}")
    raise RuntimeError("fused Adan on CPU could not compile its C kernel:\n" + "\n".join(errors))


@functools.cache
def cpu_kernel_library() -> ctypes.CDLL:
    """Compile (once per machine and source) and load the C kernel."""
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(
        "\0".join([_SOURCE, str(_CHUNK), cc, version, _cpu_id()]).encode()
    ).hexdigest()[:20]
    directory = cache_dir() / "adan_cpu"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home: build in a private temporary folder instead
        directory = Path(tempfile.mkdtemp(prefix="batchcraft_adan_"))
    lib_path = directory / f"adan_{key}.so"
    if not lib_path.exists():
        _build(cc, lib_path)
    lib = ctypes.CDLL(str(lib_path))
    ptrs = ctypes.POINTER(ctypes.c_void_p)
    for name in CPU_KERNELS.values():
        if not hasattr(lib, name):  # fp16 without compiler support
            continue
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), *[ptrs] * 7,
                       ctypes.POINTER(ctypes.c_double), ctypes.c_void_p, ctypes.c_int]  # fmt: skip
    return lib


def _pointers(tensors: list[Tensor]) -> ctypes.Array[ctypes.c_void_p]:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def adan_cpu_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    prev_grads: list[Tensor],
    state_steps: list[Tensor],
    *,
    clip_coef: Tensor | None,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
    maximize: bool,
    group_step: int | None,
) -> None:
    """One C call for a bucket of CPU tensors sharing (param dtype, state dtype).

    Every tensor must be contiguous, the gradients must have the parameters' dtype, each state
    tensor the bucket's state dtype, and each step a 0-d float32 CPU tensor (the caller,
    :func:`batchcraft.optim._adan_fused._fused_adan`, arranges all of this).

    Args:
        params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads: aligned lists ``[*]``.
        state_steps: 0-d float32 CPU counters, incremented by the kernel.
        clip_coef: 0-d clip factor or ``None``.
        lr, beta1, beta2, beta3, eps, weight_decay, no_prox, maximize, group_step: as in
            :func:`batchcraft.optim.adan`.
    """
    if not params:
        return
    key = (params[0].dtype, exp_avgs[0].dtype)
    fn = getattr(cpu_kernel_library(), CPU_KERNELS[key])
    numel = (ctypes.c_int64 * len(params))(*[p.numel() for p in params])
    hp = (ctypes.c_double * 9)(
        lr, beta1, beta2, beta3, eps, weight_decay, float(no_prox), float(maximize),
        -1.0 if group_step is None else float(group_step),
    )  # fmt: skip
    clip = None if clip_coef is None else clip_coef.detach().to("cpu", torch.float64)
    rc = fn(
        len(params),
        numel,
        *(_pointers(x) for x in (params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs)),
        _pointers(prev_grads),
        _pointers(state_steps),
        hp,
        None if clip is None else clip.data_ptr(),
        torch.get_num_threads(),
    )
    if rc != 0:
        raise MemoryError("fused Adan on CPU: the C kernel could not allocate its work list")
