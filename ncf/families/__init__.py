"""Model families behind one seam (`ncf.families.base`): the registry.

Adding a family is one module defining `FAMILY` (a `ncf.families.base.Family`), one line here, its settings in
`ncf.train.TrainConfig` and its tests (docs/ARCHITECTURE.md, "Adding a model family"). Modules are imported only
when their family is used.
"""

from __future__ import annotations

import importlib

from ncf.errors import UserError

FAMILIES: dict[str, str] = {
    "ncf": "ncf.families.ncf",  # GMF / MLP / NeuMF (He et al. 2017), seed ensembles
    "ease": "ncf.families.ease",  # EASE (Steck 2019), closed form
    "ials": "ncf.families.ials",  # implicit ALS (Hu et al. 2008) through the `implicit` library
    "popularity": "ncf.families.popularity",  # training counts: the cold-start fallback and the baseline
}


def get(name: str):
    """The `Family` registered as `name`."""
    if name not in FAMILIES:
        raise UserError(f"family: unknown model family {name!r}; choose one of {list(FAMILIES)}")
    return importlib.import_module(FAMILIES[name]).FAMILY
