"""CIFAR-10-LT and CIFAR-100-LT with ResNet-32, as LDAM-DRW (Cao et al. 2019) trains them:
one argument DATASET,PROFILE,METHOD.

    python -m polyjax.main --config=configs/cifar_lt.py:cifar10,exp100,ldam --config.data.data_dir=DIR

DATASET  cifar10, cifar100 (every label its own class; prepare cifar100 with
         `python -m polyjax.data prepare cifar100 --data_dir=DIR`).
PROFILE  exp100, exp10, step100, step10: the imbalance profile and ratio over every
         label, as LDAM-DRW's imbalance_cifar.py (data.imb_over='all'): exp 100 keeps
         12,406 CIFAR-10 training images (5000 down to 50 per class), 10,847 of CIFAR-100.
METHOD   erm   cross-entropy, linear head (the paper's ERM row).
         ldam  LDAM (max_margin 0.5, s = 30) on the cosine head (model.head='normed'),
               as LDAM-DRW's code pairs them (its LDAM row).
         ldam_drw  ldam with deferred re-weighting: from epoch 160 on, class-balanced
               weights (weighting.cb_beta 0.9999, weighting.drw_epoch 160; the paper's
               best row).

Training, from LDAM-DRW's cifar_train.py: ResNet-32 (polyjax.resnet.ResNet32), SGD lr 0.1,
momentum 0.9, weight decay 2e-4, batch 128, 200 epochs, linear warm-up over the first 5
epochs, lr x 0.01 after epoch 160 and again after 180, random crop and flip. Differences:
LDAM-DRW trains on the whole long-tailed set and picks nothing on validation; here 10% of
it is held out as the val split (data.val_frac; the best checkpoint by val accuracy is also
tested); its warm-up steps once per epoch (lr x e/5 in epoch e), polyjax's every step; its
normalisation std is (0.2023, 0.1994, 0.2010), polyjax's CIFAR std (polyjax.data.preprocess).

The paper's numbers, top-1 error (%) on the balanced test set (Table 2 of Cao et al. 2019,
ResNet-32), in PAPER below; ours is 100 * (1 - test/acc) of summary.json's 'final':

    CIFAR-10       exp100  exp10  step100  step10
      ERM          29.64   13.61  36.70    17.50
      LDAM         26.65   13.04  33.42    15.00
      LDAM-DRW     22.97   11.84  23.08    12.19
    CIFAR-100
      ERM          61.68   44.30  61.45    45.37
      LDAM         60.40   43.09  60.42    43.73
      LDAM-DRW     57.96   41.29  54.64    40.54
"""

from polyjax.config import base_config, parse_config_arg, set_field

DATASETS = ("cifar10", "cifar100")
PROFILES = {"exp100": ("exp", 100.0), "exp10": ("exp", 10.0),
            "step100": ("step", 100.0), "step10": ("step", 10.0)}
METHODS = {
    "erm": {"loss.name": "ce", "model.head": "linear"},
    "ldam": {"loss.name": "ldam", "loss.max_margin": 0.5, "loss.inv_temperature": 30.0,
             "model.head": "normed"},
}
METHODS["ldam_drw"] = {**METHODS["ldam"], "weighting.mode": "reweighted",
                       "weighting.cb_beta": 0.9999, "weighting.drw_epoch": 160}
# LDAM-DRW's cifar_train.py defaults.
TRAINING = {
    "model.name": "resnet32", "data.class_subset": (), "data.imb_over": "all",
    "data.augment": True, "data.val_frac": 0.1, "weighting.mode": "none",
    "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "batch_size": 128,
    "num_epochs": 200, "lr_schedule": "step", "warmup_epochs": 5.0,
    "lr_step_epochs": (160, 180), "lr_step_factor": 0.01, "test_on_best": True,
}
# Top-1 test error (%), Table 2 of Cao et al. 2019, by METHOD.
PAPER = {
    "cifar10,exp100": {"erm": 29.64, "ldam": 26.65, "ldam_drw": 22.97},
    "cifar10,exp10": {"erm": 13.61, "ldam": 13.04, "ldam_drw": 11.84},
    "cifar10,step100": {"erm": 36.70, "ldam": 33.42, "ldam_drw": 23.08},
    "cifar10,step10": {"erm": 17.50, "ldam": 15.00, "ldam_drw": 12.19},
    "cifar100,exp100": {"erm": 61.68, "ldam": 60.40, "ldam_drw": 57.96},
    "cifar100,exp10": {"erm": 44.30, "ldam": 43.09, "ldam_drw": 41.29},
    "cifar100,step100": {"erm": 61.45, "ldam": 60.42, "ldam_drw": 54.64},
    "cifar100,step10": {"erm": 45.37, "ldam": 43.73, "ldam_drw": 40.54},
}


def get_config(arg=None):
  dataset, profile, method = parse_config_arg(arg, dataset=DATASETS, profile=PROFILES,
                                              method=METHODS)
  imb_type, imb_factor = PROFILES[profile]
  c = base_config()
  fields = {"data.name": dataset, "data.imb_type": imb_type, "data.imb_factor": imb_factor,
            **TRAINING, **METHODS[method]}
  for field, value in fields.items():
    set_field(c, field, value)
  return c
