"""Model families behind one seam (`ncf.families.base`): the registry.

Adding a family is one module defining `FAMILY` (a `ncf.families.base.Family`), one line here, its settings in
`ncf.train.TrainConfig` and its tests (docs/ARCHITECTURE.md, "Adding a model family"). Modules are imported only
when their family is used. `COMPOSITES` are families of packages that model selection makes from other families'
fitted models (never trained on their own, so neither a `--family` nor a candidate); they load like any other.
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
COMPOSITES: dict[str, str] = {
    "blend": "ncf.families.blend",  # a validation-weighted sum of the tuned candidates' scores
}


def get(name: str):
    """The `Family` registered as `name`."""
    module = FAMILIES.get(name) or COMPOSITES.get(name)
    if module is None:
        raise UserError(f"family: unknown model family {name!r}; choose one of {list(FAMILIES)}")
    return importlib.import_module(module).FAMILY
