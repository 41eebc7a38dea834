"""Converts torchvision's ImageNet ResNet-50 weights to the .npz polyjax loads.

    pip install torch torchvision   # only for this script; polyjax never imports torch
    python scripts/convert_torchvision_resnet50.py --out=resnet50_imagenet.npz
    python -m polyjax.main --config=configs/table.py:celeba,poly,iw \
        --config.model.pretrained=resnet50_imagenet.npz [--config.model.freeze_features=True]

The .npz keeps torchvision's state-dict names and PyTorch layouts (conv weights
(O, I, kh, kw); BatchNorm weight, bias, running_mean, running_var); polyjax
transposes them and checks every name and shape when it loads the file
(polyjax/resnet.py: load_torchvision_weights). `--weights` picks the torchvision
weights enum (default IMAGENET1K_V1, the weights of the original papers'
experiments; IMAGENET1K_V2 is the newer recipe); `--state_dict` converts a local
.pth file instead (no download).
"""

import argparse

import numpy as np
import torch
import torchvision


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="Output .npz path.")
  parser.add_argument("--weights", default="IMAGENET1K_V1", help="torchvision ResNet50_Weights name.")
  parser.add_argument("--state_dict", default=None, help="A local .pth state dict to convert instead.")
  args = parser.parse_args()
  if args.state_dict:
    state = torch.load(args.state_dict, map_location="cpu")
  else:
    weights = getattr(torchvision.models.ResNet50_Weights, args.weights)
    state = torchvision.models.resnet50(weights=weights).state_dict()
  arrays = {k: v.detach().cpu().numpy() for k, v in state.items()
            if not k.endswith("num_batches_tracked")}
  np.savez(args.out, **arrays)
  print(f"wrote {len(arrays)} arrays to {args.out}")


if __name__ == "__main__":
  main()
