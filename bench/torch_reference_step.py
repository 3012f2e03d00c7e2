"""The authors' architecture in PyTorch, for the speed comparison only (never a dependency).

ResNet50 (torchvision, random weights: speed does not depend on them) with BatchNorm statistics
frozen, the attentive grouping head of method.md (1x1 key/value convs without bias, one query per
group, softmax over positions, weighted sum, per-group L2 normalisation), the margin loss with
distance-weighted negative sampling applied per group, and the diversity loss. Runs one training
step repeatedly on a fixed batch with Adam (the authors' CUB parameter groups: coupled L2 weight
decay 3e-3 on the backbone and key/value convs, 1e-3 on the queries, the betas at their own rate
without decay) and prints images/s as JSON on the last line. With ``--count_flops`` one extra
step runs under ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward FLOPs, dense
convolution taps) and the JSON has ``step_flops``. ``--precision bf16`` runs the forward pass
and the losses under ``torch.autocast(device_type="cpu", dtype=torch.bfloat16)`` (float32 master
weights and optimizer, as Keras' ``mixed_bfloat16`` policy): the like-for-like reference of the
``bf16`` variants.

Note: torchvision's ResNet50 is "v1.5" (stride 2 in the 3x3 conv of a bottleneck), Keras'
``ResNet50`` is v1 (stride in the first 1x1 conv): the PyTorch network does ~6% more arithmetic.

Run by bench/train_step_speed.py inside the separate venv .venv-torch
(`pip install torch==2.14.1 torchvision==0.29.1`).
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
import torchvision


class AttentiveGrouping(torch.nn.Module):
    def __init__(self, channels, num_groups=3, group_dim=170, reduction=8):
        super().__init__()
        key_dim = channels // reduction
        self.key = torch.nn.Conv2d(channels, key_dim, 1, bias=False)
        self.value = torch.nn.Conv2d(channels, group_dim, 1, bias=False)
        self.queries = torch.nn.Parameter(torch.randn(num_groups, key_dim) * 0.05)

    def forward(self, x):
        keys = self.key(x).flatten(2)  # (B, key_dim, N)
        values = self.value(x).flatten(2)  # (B, d, N)
        attention = torch.softmax(torch.einsum("kc,bcn->bkn", self.queries, keys), dim=-1)
        groups = torch.einsum("bkn,bdn->bkd", attention, values)
        return F.normalize(groups, dim=-1), attention


def diversity_loss(groups, beta1=2.0, beta2=0.5, scale=25.0):
    k = groups.shape[1]
    cos = torch.einsum("bid,bjd->bij", groups, groups)
    i, j = torch.triu_indices(k, k, offset=1)
    return F.softplus(beta1 * scale * (cos[:, i, j] - beta2)).mean(0).sum() / (k - 1)


def margin_loss(emb, labels, beta, margin=0.2, cutoff=0.5):
    """Wu et al. 2017 margin loss with distance-weighted sampling, for one group."""
    n, dim = emb.shape
    with torch.no_grad():
        dist = torch.cdist(emb, emb).clamp(min=cutoff)
        log_w = (2.0 - dim) * dist.log() - ((dim - 3) / 2.0) * (1.0 - 0.25 * dist.pow(2)).clamp(
            min=1e-8).log()
        same = labels[:, None] == labels[None, :]
        log_w = log_w.masked_fill(same, -math.inf)
        weights = torch.softmax(log_w, dim=1)
        negatives = torch.multinomial(weights, 1).squeeze(1)
        pos_mask = same & ~torch.eye(n, dtype=torch.bool)
        positives = torch.multinomial(pos_mask.float() + 1e-12, 1).squeeze(1)
    d_ap = (emb - emb[positives]).norm(dim=1)
    d_an = (emb - emb[negatives]).norm(dim=1)
    b = beta[labels]
    terms = F.relu(d_ap - b + margin) + F.relu(b - d_an + margin)
    active = (terms > 0).sum().clamp(min=1)
    return terms.sum() / active


class Net(torch.nn.Module):
    def __init__(self, num_groups, group_dim, num_classes):
        super().__init__()
        resnet = torchvision.models.resnet50(weights=None)
        self.backbone = torch.nn.Sequential(*list(resnet.children())[:-2])
        self.head = AttentiveGrouping(2048, num_groups, group_dim)
        self.beta = torch.nn.Parameter(torch.full((num_classes, num_groups), 1.2))

    def train(self, mode=True):
        super().train(mode)
        for m in self.backbone.modules():  # frozen BN statistics, as the reference
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        return self


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count_flops", action="store_true")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    if args.batch < 2 or args.batch % 2 or args.warmup < 1:
        parser.error("--batch must be even and >= 2 (classes x 2) and --warmup >= 1.")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    num_groups, group_dim, classes = 3, 170, args.batch // 2
    net = Net(num_groups, group_dim, classes).train()
    head = net.head
    backbone = list(net.backbone.parameters())
    opt = torch.optim.Adam([
        {"params": backbone, "weight_decay": 3e-3},
        {"params": [head.key.weight, head.value.weight], "weight_decay": 3e-3},
        {"params": [head.queries], "weight_decay": 1e-3},
        {"params": [net.beta], "lr": 5e-5, "weight_decay": 0.0},
    ], lr=1e-5)
    images = torch.rand(args.batch, 3, args.image_size, args.image_size)
    labels = torch.arange(args.batch) // 2

    def step():
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16,
                            enabled=args.precision == "bf16"):
            groups, _ = net.head(net.backbone(images))
            emb = sum(margin_loss(groups[:, g], labels, net.beta[:, g])
                      for g in range(num_groups))
            loss = emb / num_groups + 0.02 * diversity_loss(groups)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    step()
    first_step_s = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        step()
    step_flops = None
    if args.count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        step_flops = counter.get_total_flops()
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        rates.append(args.batch * args.steps / (time.perf_counter() - start))
    print(json.dumps({
        "framework": "pytorch " + torch.__version__,
        "precision": args.precision,
        "images_per_s": rates,
        "first_step_s": first_step_s,
        "step_flops": step_flops,
        "mkldnn": "on" if torch.backends.mkldnn.is_available() else "off",
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
