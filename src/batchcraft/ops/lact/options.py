"""The static options of the LaCT op: one frozen dataclass, validated once.

:class:`LaCTOptions` says *how* the fast weights learn (chunk size, momentum, Muon, weight norm,
fast-weight kind, inner loss, ...). It travels unchanged from a model config through the layer to
the op, and every implementation (``naive``, ``chunk``, ``bf16``, ``compiled``, ``triton``) takes
it with the same call signature::

    fn(q, k, v, lr, state, options, *, schedule="causal", beta=None, cu_seqlens=None)

What changes per call (the tensors, the schedule, the momentum gates ``beta``, packed-document
boundaries) stays a call argument. The layer options of :class:`batchcraft.nn.lact.LaCTLayer`
and :class:`batchcraft.models.LaCTConfig` extend this class, so an op option added here is at once
a layer option and a config field.

Keyword shorthand: ``lact(q, k, v, lr, W0, chunk_size=64, beta=beta, muon="tuned")`` builds the
options object (:func:`resolve_options`). It also accepts three historical spellings: ``impl``
(= ``lact_impl``), ``loss`` (= ``inner_loss``) and ``muon=None | "tuned" | "classic"`` (sets
``use_muon`` and the schedule); without ``use_momentum`` the keyword form turns momentum on
exactly when ``beta`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

__all__ = [
    "FAST_WEIGHTS",
    "IMPLS",
    "INNER_LOSSES",
    "MUON_SCHEDULES",
    "WEIGHT_NORMS",
    "LaCTOptions",
    "resolve_options",
]

INNER_LOSSES: tuple[str, ...] = ("neg_dot", "mse")
MUON_SCHEDULES: tuple[str, ...] = ("tuned", "classic")
WEIGHT_NORMS: tuple[str | None, ...] = ("post", "pre", None)
FAST_WEIGHTS: tuple[str, ...] = ("swiglu", "linear")
IMPLS: tuple[str, ...] = ("auto", "naive", "chunk", "bf16", "compiled", "triton")
TUNED_STEPS = 5  # the "tuned" Newton-Schulz schedule has exactly five (a, b, c) triples

_Opt = TypeVar("_Opt", bound="LaCTOptions")
_ALIASES = {"impl": "lact_impl", "loss": "inner_loss"}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_bool(obj: Any, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(obj, name), bool):
            raise TypeError(f"{name} must be a bool, got {getattr(obj, name)!r}")


@dataclass(frozen=True, kw_only=True)
class LaCTOptions:
    """How the fast weights learn; validated in ``__post_init__`` (``ValueError``/``TypeError``)."""

    chunk_size: int | None = None  # C: tokens per update of the causal schedule (required there)
    use_momentum: bool = False  # heavy-ball momentum over updates; the op then needs beta
    use_muon: bool = False  # Newton-Schulz orthogonalised updates
    muon: str = "tuned"  # Newton-Schulz schedule: "tuned" (LM, 5 fixed steps) or "classic"
    muon_steps: int = 5  # Newton-Schulz steps ("tuned": at most 5; 0 = Frobenius normalisation)
    weight_norm: str | None = "post"  # "post", "pre" or None: row renorm to the norms of W0
    fast_weight: str = "swiglu"  # "swiglu" (gate, up, down) or "linear" (down only)
    inner_loss: str = "neg_dot"  # "neg_dot" (paper) or "mse"
    inner_steps: int = 1  # descent steps per update (1 in the paper)
    check: bool = False  # also check finiteness, lr >= 0 and beta in [0, 1] (a device sync)
    recompute: bool = False  # per-chunk activation checkpointing in the fast path
    lact_impl: str = "auto"  # "auto", "naive", "chunk", "bf16", "compiled" or "triton"

    def __post_init__(self) -> None:
        c = self.chunk_size
        if c is not None and (not _is_int(c) or c < 1):
            raise ValueError(f"chunk_size must be a positive int, got {c!r}")
        _check_bool(self, "use_momentum", "use_muon", "check", "recompute")
        _check_choice("muon", self.muon, MUON_SCHEDULES)
        if not _is_int(self.muon_steps) or self.muon_steps < 0:
            raise ValueError(f"muon_steps must be an int >= 0, got {self.muon_steps!r}")
        if self.muon == "tuned" and self.muon_steps > TUNED_STEPS:
            raise ValueError(
                f"the 'tuned' schedule has exactly {TUNED_STEPS} steps; muon_steps must be "
                f"<= {TUNED_STEPS}, got {self.muon_steps} (use muon='classic' for more)"
            )
        _check_choice("weight_norm", self.weight_norm, WEIGHT_NORMS)
        _check_choice("fast_weight", self.fast_weight, FAST_WEIGHTS)
        _check_choice("inner_loss", self.inner_loss, INNER_LOSSES)
        if not _is_int(self.inner_steps) or self.inner_steps < 1:
            raise ValueError(f"inner_steps must be an int >= 1, got {self.inner_steps!r}")
        _check_choice("lact_impl", self.lact_impl, IMPLS)

    @property
    def muon_schedule(self) -> str | None:
        """The Newton-Schulz schedule applied to every update, or ``None`` (Muon off)."""
        return self.muon if self.use_muon else None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of every field of this class (inherited ones included)."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def project(cls: type[_Opt], src: LaCTOptions) -> _Opt:
        """This class's fields read from ``src`` (e.g. the op options of a layer or config)."""
        if type(src) is cls:
            return src
        return cls(**{name: getattr(src, name) for name in cls.field_names()})

    @classmethod
    def build(cls: type[_Opt], base: _Opt | None = None, **changes: Any) -> _Opt:
        """``cls(**changes)``, or ``base`` with ``changes`` applied; unknown names raise ``TypeError``."""
        unknown = sorted(set(changes) - set(cls.field_names()))
        if unknown:
            raise TypeError(
                f"unknown {cls.__name__} option(s) {unknown}; valid names: {list(cls.field_names())}"
            )
        if base is None:
            return cls(**changes)
        return replace(base, **changes) if changes else base


def resolve_options(
    options: LaCTOptions | None, keywords: dict[str, Any], *, beta_given: bool
) -> LaCTOptions:
    """The options of one op call: ``options`` with keyword overrides, or built from keywords.

    Args:
        options: an options object, or ``None`` for the keyword form.
        keywords: option names (plus the aliases ``impl``, ``loss`` and ``muon=None|kind``).
        beta_given: whether the call passes momentum gates; in the keyword form without
            ``use_momentum`` this decides momentum on/off.

    Returns:
        A validated :class:`LaCTOptions` (``options`` itself when there are no keywords).
    """
    kw = dict(keywords)
    for old, new in _ALIASES.items():
        if old in kw:
            if new in kw:
                raise TypeError(f"pass {new}= or its alias {old}=, not both")
            kw[new] = kw.pop(old)
    if "muon" in kw and "use_muon" not in kw:  # the op's historical muon=None | "tuned" | "classic"
        m = kw["muon"]
        if m is not None and m not in MUON_SCHEDULES:
            raise ValueError(f"muon must be None, 'tuned' or 'classic', got {m!r}")
        kw["use_muon"] = m is not None
        if m is None:
            del kw["muon"]
    if options is None:
        kw.setdefault("use_momentum", beta_given)
        return LaCTOptions.build(None, **kw)
    if not isinstance(options, LaCTOptions):
        raise TypeError(f"options must be a LaCTOptions, got {type(options).__name__}")
    return type(options).build(options, **kw)
