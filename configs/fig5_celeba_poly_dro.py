"""Subsampled CelebA, paper Figure 5: Poly+DRO: poly-tailed loss (alpha 2) with group DRO.

    python -m polyjax.main --config=configs/fig5_celeba_poly_dro.py --config.data.data_dir=DIR

Data: subsampled CelebA (Blond_Hair, confounder Male, 2% of the training split), ResNet-50 at 224.
Paper (Fig. 5, mean of 10 seeds): balanced test accuracy (test/reweighted_acc) 0.867.
Hyperparameters from the paper's repository
(github.com/KeAWang/importance-weighting-interpolating-classifiers),
configs/experiment/celeba_dro.yaml and the sweep script's run groups
'2021-11-12_celeba_dro' / '2021-11-13_celeba_dro_*' (lr 0.001, 200 epochs, adv_probs_lr
0.05), alpha 2: SGD lr 0.001, momentum 0.9, no weight decay, batch 64, 200 epochs,
adv_probs_lr 0.05. The repository's DRO runs start from ImageNet weights
(architecture.pretrained: True); load them with the model's pretrained-weights option
where available.
Its DRO objective (at the latest commit, db93a3b,
src/pl_models/imbalanced_classifier_model.py) is sum_g q_g l_g: l_g the batch's mean loss
in group g (0 for a group absent from the batch), weighted by the group probabilities q
after this step's exponentiated-gradient update; polyjax's dro weighting minimises the
same (Sagawa et al.'s objective, polyjax/weighting.py).
Class or group counts for the loss come from the training split.
"""

from polyjax.config import base_config, dataset_preset


def get_config():
  c = dataset_preset(base_config(), "celeba")
  c.loss.name = "poly"
  c.loss.kind = "logit"
  c.loss.alpha = 2.0
  c.loss.beta = 1.0
  c.weighting.mode = "dro"
  c.weighting.adv_probs_lr = 0.05
  c.lr = 0.001
  c.weight_decay = 0.0
  c.num_epochs = 200
  return c
