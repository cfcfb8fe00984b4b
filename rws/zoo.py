"""Named architectures, parsed from a spec string once.

Spec grammar::

    FAMILY:SIZES              the same family in P and Q, e.g. ``sbn:200-200-10``
    PFAMILY/QFAMILY:SIZES     different families, e.g. ``sbn/nade:200`` (P SBN, Q NADE)

SIZES lists the latent layers bottom-up: ``200-200-10`` is x <- 200 <- 200 <- 10 with
the 10-unit layer as the top prior (the CLI convention of Bornschein & Bengio's code).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from rws import layers
from rws.errors import UserError
from rws.model import HelmholtzMachine


@dataclass(frozen=True)
class Family:
    conditional: type   # constructor (n_x, n_y) -> layer
    top: type           # constructor (n_x) -> layer


FAMILIES: dict[str, Family] = {
    "sbn": Family(layers.SBN, layers.SBNTop),
}

_SPEC = re.compile(r"^(?P<p>[a-z]+)(?:/(?P<q>[a-z]+))?:(?P<sizes>\d+(?:-\d+)*)$")


@dataclass(frozen=True)
class Spec:
    p_family: str
    q_family: str
    sizes: tuple[int, ...]   # latent sizes, bottom-up

    def __str__(self) -> str:
        fam = self.p_family if self.p_family == self.q_family else f"{self.p_family}/{self.q_family}"
        return f"{fam}:{'-'.join(map(str, self.sizes))}"


def parse(spec: str) -> Spec:
    m = _SPEC.match(spec.strip())
    if not m:
        raise UserError(f"cannot parse model spec '{spec}'; write FAMILY:SIZES such as "
                        f"'sbn:200' or 'sbn:200-200-10', or PFAMILY/QFAMILY:SIZES such as "
                        f"'sbn/nade:200' (families: {', '.join(FAMILIES)})")
    p, q = m["p"], m["q"] or m["p"]
    for fam in (p, q):
        if fam not in FAMILIES:
            raise UserError(f"unknown layer family '{fam}' in model spec '{spec}'; "
                            f"choose one of: {', '.join(FAMILIES)}")
    sizes = tuple(int(s) for s in m["sizes"].split("-"))
    if any(s <= 0 for s in sizes):
        raise UserError(f"model spec '{spec}': every layer size must be positive")
    return Spec(p, q, sizes)


def build(spec: str | Spec, n_data: int) -> HelmholtzMachine:
    """A Helmholtz machine for data of ``n_data`` binary units."""
    s = parse(spec) if isinstance(spec, str) else spec
    dims = [n_data, *s.sizes]   # [D, n_1, ..., n_L]
    pf, qf = FAMILIES[s.p_family], FAMILIES[s.q_family]
    p_layers = [pf.conditional(dims[l], dims[l + 1]) for l in range(len(s.sizes))]
    p_layers.append(pf.top(dims[-1]))
    q_layers = [qf.conditional(dims[l + 1], dims[l]) for l in range(len(s.sizes))]
    return HelmholtzMachine(p_layers, q_layers, spec=str(s))
