"""The NCF family: GMF, MLP and NeuMF (He et al. 2017), with everything the trainer has (ncf/train.py): the CPU fast
path (ncf/cpu_step.py), the GPU autograd path, torchrun DDP, pretraining, refit, seed ensembles, checkpoints and
bit-identical resume.

Package: `config.json` holds the `ModelSpec` (`model_type`, `num_users`, `num_items`, `factor_num`, `num_layers`,
`dropout`, `mlp_layers`, `members`) and `"score": "logit"`; `weights.safetensors` the model's state dict (an
ensemble's as `members.<k>.<name>`). Packages written before families existed are exactly this without `family`.
Scorer: `ncf.scoring.ItemScorer` (logits; inner product: the GMF part, see its docstring).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ncf import train
from ncf.families.base import ExportedModel, Family, FitContext, FitResult
from ncf.models import NCF, ModelSpec, NCFEnsemble, build_model
from ncf.sampling import RECENCY_WEIGHTS
from ncf.scoring import ItemScorer
from ncf.splits import FitData


def export(model: NCF | NCFEnsemble) -> ExportedModel:
    """The package contents of a trained model (CPU copies of its state dict)."""
    weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    return ExportedModel(NCFFamily.name, weights, {**model.spec.to_dict(), "score": "logit"})


def _check_weights(spec: ModelSpec, weights: dict[str, torch.Tensor]) -> None:
    """ValueError unless `weights` are exactly the state dict of `spec`'s model (names and shapes)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(spec).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if got != expected:
        wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
        raise ValueError(f"missing {sorted(expected.keys() - got.keys())[:5]}, unexpected "
                         f"{sorted(got.keys() - expected.keys())[:5]}, shape mismatch "
                         f"{[(k, got[k], expected[k]) for k in wrong[:5]]}")


def load_model(package) -> NCF | NCFEnsemble:
    """A trainable copy of an NCF package's model (eval mode, CPU); scoring needs only `package.scorer`."""
    model = build_model(ModelSpec.from_dict(package.config))
    model.load_state_dict(package.weights)
    return model.eval()


class NCFFamily(Family):
    name = "ncf"
    settings_type = train.NCFSettings
    distributed = True

    def uses_validation(self, settings: train.NCFSettings) -> bool:
        return settings.patience > 0

    def default_threads(self, settings: train.NCFSettings, cores: int) -> int:
        # Small batches are dominated by per-op overhead, where extra threads only add synchronisation (and on
        # shared cores, oversubscription): measured 1 thread fastest up to batch 2048 (docs/training.md).
        return 1 if settings.batch_size <= 2048 else cores

    def search_space(self, trial, settings: train.NCFSettings) -> dict[str, Any]:
        # The data-dependent settings of the training objective (docs/training.md, sweep 3): how strongly the
        # latest interactions count, how many negatives per positive, L2. Epochs come from early stopping.
        return {"recency_weight": trial.suggest_categorical("recency_weight", list(RECENCY_WEIGHTS)),
                "num_neg": trial.suggest_int("num_neg", 2, 16, log=True),
                "weight_decay": trial.suggest_categorical("weight_decay", [0.0, 1e-6, 1e-5, 1e-4])}

    def trial_settings(self, settings: train.NCFSettings) -> train.NCFSettings:
        # A trial is the selection pass only (one model, epochs by early stopping): the ensemble's refit members
        # train for the epochs it selects, so the final fit reuses the winning trial's pass (FitContext.reuse).
        return dataclasses.replace(settings, ensemble=1)

    def fit(self, data: FitData, settings: train.NCFSettings, context: FitContext) -> FitResult:
        model, metrics, loss, report_line, selection_pass = train.fit_ncf(data, settings, context)
        return FitResult(ItemScorer(model.eval()), export(model), metrics, loss, report_line, state=selection_pass)

    def load(self, weights: dict[str, torch.Tensor], config: dict[str, Any], package) -> ItemScorer:
        spec = ModelSpec.from_dict(config)
        _check_weights(spec, weights)
        return ItemScorer.from_state(spec, weights)


FAMILY = NCFFamily()
