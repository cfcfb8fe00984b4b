"""Named architectures, parsed from a spec string once.

Spec grammar::

    FAMILY[OPTIONS]:SIZES                      the same family in P and Q
    PFAMILY[OPTIONS]/QFAMILY[OPTIONS]:SIZES    different families (or options) for P and Q

SIZES lists the latent layers bottom-up: ``200-200-10`` is x <- 200 <- 200 <- 10 with
the 10-unit layer as the top prior (the CLI convention of Bornschein & Bengio's code).
Their paper lists layers from the top instead: its "SBN 10-100-200-300-400" is
``sbn:400-300-200-100-10`` here.
OPTIONS is ``[key=value,...]``. Examples::

    sbn:200-200-10                 deep sigmoid belief net, SBN Q
    sbn/nade:200                   SBN P, NADE Q
    nade[hidden=200]:200           NADE in P and Q (the paper's NADE 200 model)
    dsbn[hidden=300,act=tanh]:200  SBN layers with one tanh hidden layer of 300 units
    darn:200                       autoregressive SBN layers
    sbn[clamp=1]/sbn:200           P with REF's clamped sigmoid, Q without
    gauss:50                       Gaussian latents, tanh MLPs (the VAE/IWAE model 784-200-200-50)
    gauss[hidden=100-100]:100-50
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field, replace

from torch import nn

from rws import layers
from rws.errors import UserError
from rws.model import HelmholtzMachine


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes"):
        return True
    if v.lower() in ("0", "false", "no"):
        return False
    raise ValueError("expected 0 or 1")


def _widths(v: str) -> tuple[int, ...]:
    widths = tuple(int(w) for w in v.split("-"))
    if any(w <= 0 for w in widths):
        raise ValueError("widths must be positive")
    return widths


def _act(v: str) -> str:
    if v not in layers.ACTIVATIONS:
        raise ValueError(f"choose one of {', '.join(layers.ACTIVATIONS)}")
    return v


def _positive(v: str) -> int:
    n = int(v)
    if n <= 0:
        raise ValueError("must be positive")
    return n


@dataclass(frozen=True)
class Family:
    """How a family builds each role: 'data' (P_0, over x), 'latent' (P_l, l > 0),
    'top' (the prior) and 'q' (Q_l); each maker takes (n_x, n_y, **options)."""

    latent: str                           # "binary" or "gaussian": P and Q must agree
    data: type
    latent_p: type
    top: type
    q: type
    options: dict = field(default_factory=dict)   # name -> parser
    top_options: tuple = ()                        # options the top layer takes


FAMILIES: dict[str, Family] = {
    "sbn": Family("binary", layers.SBN, layers.SBN, layers.SBNTop, layers.SBN,
                  {"clamp": _bool}, ("clamp",)),
    "dsbn": Family("binary", layers.DSBN, layers.DSBN, layers.SBNTop, layers.DSBN,
                   {"hidden": _widths, "act": _act, "clamp": _bool}, ("clamp",)),
    "darn": Family("binary", layers.DARN, layers.DARN, layers.DARNTop, layers.DARN,
                   {"clamp": _bool}, ("clamp",)),
    "nade": Family("binary", layers.NADE, layers.NADE, layers.NADETop, layers.NADE,
                   {"hidden": _positive, "clamp": _bool}, ("hidden", "clamp")),
    "gauss": Family("gaussian", layers.MLPBernoulli, layers.Gaussian, layers.StandardNormal,
                    layers.Gaussian, {"hidden": _widths}, ()),
}

_SIDE = r"([a-z]+)(?:\[([^\]]*)\])?"
_SPEC = re.compile(rf"^{_SIDE}(?:/{_SIDE})?:(\d+(?:-\d+)*)$")


@dataclass(frozen=True)
class Side:
    family: str
    options: tuple[tuple[str, str], ...] = ()   # as written, for printing

    def __str__(self):
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        return self.family + (f"[{opts}]" if opts else "")

    def parsed(self) -> dict:
        parsers = FAMILIES[self.family].options
        return {k: parsers[k](v) for k, v in self.options}


@dataclass(frozen=True)
class Spec:
    p: Side
    q: Side
    sizes: tuple[int, ...]   # latent sizes, bottom-up

    def __str__(self) -> str:
        fam = str(self.p) if self.p == self.q else f"{self.p}/{self.q}"
        return f"{fam}:{'-'.join(map(str, self.sizes))}"


def _side(spec: str, family: str, options: str | None) -> Side:
    if family not in FAMILIES:
        raise UserError(f"unknown layer family '{family}' in model spec '{spec}'; "
                        f"choose one of: {', '.join(FAMILIES)}")
    pairs = []
    for item in filter(None, (options or "").split(",")):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        parsers = FAMILIES[family].options
        if not eq or key not in parsers:
            raise UserError(f"model spec '{spec}': '{item}' is not an option of {family}; "
                            f"its options are: {', '.join(parsers) or 'none'} (as key=value)")
        try:
            parsers[key](value)
        except ValueError as e:
            raise UserError(f"model spec '{spec}': bad value for {family} option "
                            f"{key}='{value}' ({e})") from None
        pairs.append((key, value))
    return Side(family, tuple(pairs))


def parse(spec: str) -> Spec:
    m = _SPEC.match(spec.strip().replace(" ", ""))
    if not m:
        raise UserError(f"cannot parse model spec '{spec}'; write FAMILY:SIZES such as "
                        f"'sbn:200' or 'sbn:200-200-10', or PFAMILY/QFAMILY:SIZES such as "
                        f"'sbn/nade:200' (families: {', '.join(FAMILIES)})")
    pf, popts, qf, qopts, sizes = m.groups()
    p = _side(spec, pf, popts)
    q = _side(spec, qf, qopts) if qf else p
    if FAMILIES[p.family].latent != FAMILIES[q.family].latent:
        raise UserError(f"model spec '{spec}': P ({p.family}) and Q ({q.family}) have "
                        f"different latent types ({FAMILIES[p.family].latent} vs "
                        f"{FAMILIES[q.family].latent}); use families of one type")
    sizes = tuple(int(s) for s in sizes.split("-"))
    if any(s <= 0 for s in sizes):
        raise UserError(f"model spec '{spec}': every layer size must be positive")
    return Spec(p, q, sizes)


def build(spec: str | Spec, n_data: int) -> HelmholtzMachine:
    """A Helmholtz machine for data of ``n_data`` binary units."""
    s = parse(spec) if isinstance(spec, str) else spec
    if len(s.sizes) > 2 and all(a < b for a, b in zip(s.sizes, s.sizes[1:])):
        pyramid = replace(s, sizes=s.sizes[::-1])
        warnings.warn(f"model spec '{s}' lists its layers from the data up: its {s.sizes[0]}-unit "
                      f"layer is next to the data and its {s.sizes[-1]}-unit layer is the top "
                      f"prior; for the widest layer next to the data (the notation of papers "
                      f"that list layers from the top) write '{pyramid}'", UserWarning,
                      stacklevel=2)
    dims = [n_data, *s.sizes]   # [D, n_1, ..., n_L]
    pf, qf = FAMILIES[s.p.family], FAMILIES[s.q.family]
    po, qo = s.p.parsed(), s.q.parsed()
    p_layers: list[nn.Module] = [pf.data(dims[0], dims[1], **po)]
    p_layers += [pf.latent_p(dims[l], dims[l + 1], **po) for l in range(1, len(s.sizes))]
    p_layers.append(pf.top(dims[-1], **{k: v for k, v in po.items() if k in pf.top_options}))
    q_layers = [qf.q(dims[l + 1], dims[l], **qo) for l in range(len(s.sizes))]
    return HelmholtzMachine(p_layers, q_layers, spec=str(s))
