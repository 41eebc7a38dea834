"""The paper's Figure 5: each compared method is one argument DATASET,METHOD.

    python -m polyjax.main --config=configs/fig5.py:DATASET,METHOD --config.data.data_dir=DIR

e.g. Poly+IW on CIFAR-10:

    python -m polyjax.main --config=configs/fig5.py:cifar10,poly_iw --config.data.data_dir=DIR

DATASET: cifar10 (imbalanced binary CIFAR-10, cat vs dog, step imbalance 10; ConvNet
(Byrd & Lipton 2017), batch 64) or celeba (subsampled CelebA, Blond_Hair, confounder
Male, 2% of the training split; ResNet-50 at 224); data and model as in
polyjax.config.DATASET_PRESETS.
METHOD, with the paper's name:
  cifar10  poly_iw (Poly+IW), ce_us (CE+US), ldam (LDAM), cdt (CDT), la (LA), vs (VS)
  celeba   poly_iw (Poly+IW), ce_us (CE+US), vs (VS, the group VS loss), poly_dro
           (Poly+DRO), ce_dro (CE+DRO), vs_dro (VS+DRO)

Hyperparameters from the paper's repository
(github.com/KeAWang/importance-weighting-interpolating-classifiers): its
configs/experiment/*.yaml and the run groups of its sweep script that the paper's
figure uses, named for each method in METHODS below. PAPER below holds the figure's
numbers. Class or group counts for the loss come from the training split.
Undersampling (US) keeps each example with probability w_i / max w (fixed data seed).

The repository's DRO runs start from ImageNet weights (architecture.pretrained: True);
load them with --config.model.pretrained (scripts/convert_torchvision_resnet50.py).
Its DRO objective (at the latest commit, db93a3b,
src/pl_models/imbalanced_classifier_model.py) is sum_g q_g l_g: l_g the batch's mean loss
in group g (0 for a group absent from the batch), weighted by the group probabilities q
after this step's exponentiated-gradient update; polyjax's dro weighting minimises the
same (Sagawa et al.'s objective, polyjax/weighting.py).
"""

from polyjax.config import ConfigError, base_config, dataset_preset, parse_config_arg, set_field

_POLY = {"loss.name": "poly", "loss.kind": "logit", "loss.alpha": 2.0, "loss.beta": 1.0}
_NO_WEIGHTS = {"weighting.mode": "none"}
_UNDERSAMPLED = {"weighting.mode": "undersampled", "weighting.exponent": 1.0}
# configs/experiment/celeba_dro.yaml and the run groups '2021-11-12_celeba_dro' /
# '2021-11-13_celeba_dro_*': lr 0.001, no weight decay, 200 epochs, adv_probs_lr 0.05.
_DRO = {"weighting.mode": "dro", "weighting.adv_probs_lr": 0.05, "lr": 0.001,
        "weight_decay": 0.0, "num_epochs": 200}
# Run group '2021-11-11_vsloss_celeba': vs_group_loss gamma 0.4, tuned over 0.1-1.0.
_VS_GROUP = {"loss.name": "vs_group", "loss.gamma": 0.4}
# The CIFAR-10 loss comparisons (run groups '2021-11-11_best_*'): SGD lr 0.01,
# momentum 0.9, 300 epochs.
_CIFAR_LOSS = {"lr": 0.01, "num_epochs": 300}

# (dataset, method) -> the fields set on the dataset's preset.
METHODS = {
    # Run group '2021-11-13_tune_cifar_alpha_squared' (cifar_reweighted.yaml, alpha 2,
    # exponents 2.5 and 3): lr 0.08, no momentum, 600 epochs.
    ("cifar10", "poly_iw"): {**_POLY, "weighting.mode": "reweighted",
                             "weighting.exponent": 3.0, "lr": 0.08, "momentum": 0.0,
                             "num_epochs": 600},
    # configs/experiment/cifar_undersampled.yaml: lr 0.001, 200 epochs.
    ("cifar10", "ce_us"): {"loss.name": "ce", **_UNDERSAMPLED, "lr": 0.001,
                           "num_epochs": 200},
    # configs/loss_fn/ldam.yaml (inv_temperature 1) and '2021-11-11_best_ldam'
    # (max_margin 1.0, tuned over 0.1-1.0); the LDAM paper's own code uses max_margin
    # 0.5 and s 30 (polyjax's defaults).
    ("cifar10", "ldam"): {"loss.name": "ldam", "loss.max_margin": 1.0,
                          "loss.inv_temperature": 1.0, **_NO_WEIGHTS, **_CIFAR_LOSS},
    # '2021-11-11_best_cdtloss': gamma 0.5, tuned over 0.1-0.5 with vs_loss tau 0.
    ("cifar10", "cdt"): {"loss.name": "cdt", "loss.gamma": 0.5, **_NO_WEIGHTS, **_CIFAR_LOSS},
    # '2021-11-11_best_laloss': vs_loss with gamma 0, tau 3.0, tuned over 0-3 (the LA
    # paper's default is 1).
    ("cifar10", "la"): {"loss.name": "la", "loss.tau": 3.0, **_NO_WEIGHTS, **_CIFAR_LOSS},
    # '2021-11-11_best_vsloss': tau 3.0, gamma 0.3, tuned over tau 0-3 and gamma 0-0.5.
    ("cifar10", "vs"): {"loss.name": "vs", "loss.tau": 3.0, "loss.gamma": 0.3, **_NO_WEIGHTS,
                        **_CIFAR_LOSS},
    # configs/experiment/poly_celeba_reweighted.yaml and '2021-11-13_celeba_best_polyloss'
    # (alpha 2, exponent 2.5): lr 0.0001, batch 128, 50 epochs (the sweep's command keeps
    # the file's 50).
    ("celeba", "poly_iw"): {**_POLY, "weighting.mode": "reweighted",
                            "weighting.exponent": 2.5, "lr": 0.0001, "batch_size": 128,
                            "num_epochs": 50},
    # configs/experiment/celeba_undersampled.yaml: lr 0.0001, 50 epochs.
    ("celeba", "ce_us"): {"loss.name": "ce", **_UNDERSAMPLED, "lr": 0.0001, "num_epochs": 50},
    # configs/experiment/celeba_erm.yaml: lr 0.0001, 50 epochs.
    ("celeba", "vs"): {**_VS_GROUP, **_NO_WEIGHTS, "lr": 0.0001, "num_epochs": 50},
    ("celeba", "poly_dro"): {**_POLY, **_DRO},
    ("celeba", "ce_dro"): {"loss.name": "ce", **_DRO},
    # '2021-11-13_celeba_dro_vs_group_loss'.
    ("celeba", "vs_dro"): {**_VS_GROUP, **_DRO},
}
DATASETS = tuple(dict.fromkeys(d for d, _ in METHODS))

# The figure's balanced test accuracy (test/reweighted_acc, mean of 10 seeds).
PAPER = {
    "cifar10,poly_iw": 0.673,
    "cifar10,ce_us": 0.585,
    "cifar10,ldam": 0.587,
    "cifar10,cdt": 0.602,
    "cifar10,la": 0.669,
    "cifar10,vs": 0.693,
    "celeba,poly_iw": 0.824,
    "celeba,ce_us": 0.823,
    "celeba,vs": 0.825,
    "celeba,poly_dro": 0.867,
    "celeba,ce_dro": 0.848,
    "celeba,vs_dro": 0.832,
}


def get_config(arg=None):
  dataset, method = parse_config_arg(arg, dataset=DATASETS,
                                     method=dict.fromkeys(m for _, m in METHODS))
  if (dataset, method) not in METHODS:  # The figure compares some methods on one dataset only.
    raise ConfigError(f"config argument method {method!r} is not in Figure 5 for {dataset}; "
                      f"valid: {', '.join(m for d, m in METHODS if d == dataset)}")
  c = dataset_preset(base_config(), dataset)
  for field, value in METHODS[dataset, method].items():
    set_field(c, field, value)
  return c
