"""PyTorch entries: plain PyTorch and Opacus (hooks and ghost clipping), one thread."""

from typing import Dict

from benchmarks import peers
from benchmarks.peers import common


def _torch():
    import torch

    if torch.get_num_threads() != 1:  # once per process: interop threads cannot be reset
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    return torch


def _resnet20(nn):
    """He et al.'s CIFAR ResNet-20 with GroupNorm and option-A shortcuts, as tfdprobust's."""

    def norm(c):  # tfdprobust.models: the largest divisor of c not above 4 groups
        return nn.GroupNorm(max(g for g in range(1, min(4, c) + 1) if c % g == 0), c, eps=1e-3)

    class Shortcut(nn.Module):
        def __init__(self, channels, stride):
            super().__init__()
            self.channels, self.stride = channels, stride

        def forward(self, h):
            h = h[:, :, ::self.stride, ::self.stride]
            extra = self.channels - h.shape[1]
            return nn.functional.pad(h, (0, 0, 0, 0, extra // 2, extra - extra // 2))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm(cout), nn.ReLU(),
                                      nn.Conv2d(cout, cout, 3, 1, 1, bias=False), norm(cout))
            self.shortcut = nn.Identity() if stride == 1 and cin == cout else Shortcut(cout, stride)
            self.act = nn.ReLU()

        def forward(self, h):
            return self.act(self.body(h) + self.shortcut(h))

    blocks, cin = [], 16
    for stage, c in enumerate((16, 32, 64)):
        for b in range(3):
            blocks.append(Block(cin, c, 2 if stage > 0 and b == 0 else 1))
            cin = c
    return nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), norm(16), nn.ReLU(), *blocks,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def network(model: str):
    """The tfdprobust network ``model`` in PyTorch (NCHW; the parameter counts match)."""
    nn = _torch().nn
    if model == "cnn":  # TF "same" padding of an 8x8/2 conv on 28x28 is 3 on each side
        return nn.Sequential(nn.Conv2d(1, 16, 8, 2, padding=3), nn.ReLU(), nn.MaxPool2d(2, 1),
                             nn.Conv2d(16, 32, 4, 2), nn.ReLU(), nn.MaxPool2d(2, 1), nn.Flatten(),
                             nn.Linear(32 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))
    if model == "lenet":
        return nn.Sequential(nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(50 * 4 * 4, 500), nn.ReLU(), nn.Linear(500, 10))
    return _resnet20(nn)


def _data(spec):
    torch = _torch()
    x, y = common.batch(spec.batch_size)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)


def _pgd(model, x, y):
    """l-inf PGD against ``model``; only the input gets a gradient (no weight gradients)."""
    torch = _torch()
    x_adv = (x + torch.empty_like(x).uniform_(-peers.PGD_EPS, peers.PGD_EPS)).clamp(0, 1)
    for _ in range(peers.PGD_STEPS):
        x_adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = torch.min(torch.max(x_adv.detach() + peers.PGD_STEP_SIZE * grad.sign(), x - peers.PGD_EPS),
                          x + peers.PGD_EPS).clamp(0, 1)
    return x_adv.detach()


def _rows(model, x, y, pgd, hooks=None):
    """The training rows: the clean batch, or adversarial + clean rows (weight 1/2 each)."""
    torch = _torch()
    if not pgd:
        return x, y
    if hooks is not None:
        hooks.disable_hooks()  # the attack must not record per-sample gradients
    x_adv = _pgd(model, x, y)
    if hooks is not None:
        hooks.enable_hooks()
    return torch.cat([x_adv, x]), torch.cat([y, y])


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def torch_nondp(spec: peers.Spec) -> Dict:
    torch = _torch()
    x, y = _data(spec)
    model = network(spec.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=peers.LEARNING_RATE)

    def step():
        rows, labels = _rows(model, x, y, spec.pgd)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(rows), labels).backward()
        optimizer.step()

    return common.timed(step, spec, _count(model), path=f"PyTorch {torch.__version__}")


def _opacus(spec: peers.Spec, mode: str) -> Dict:
    torch = _torch()
    import opacus
    from opacus import PrivacyEngine

    x, y = _data(spec)
    model = network(spec.model)
    params = _count(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=peers.LEARNING_RATE)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=spec.batch_size)
    engine = PrivacyEngine()
    made = engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                               noise_multiplier=peers.NOISE, max_grad_norm=peers.L2_CLIP,
                               poisson_sampling=False, grad_sample_mode=mode,
                               criterion=torch.nn.CrossEntropyLoss())
    model, optimizer = made[0], made[1]
    criterion = made[2] if mode == "ghost" else torch.nn.CrossEntropyLoss()

    def step():
        rows, labels = _rows(model, x, y, spec.pgd, hooks=model)
        optimizer.zero_grad(set_to_none=True)
        criterion(model(rows), labels).backward()  # ghost: the criterion runs both passes
        optimizer.step()

    return common.timed(step, spec, params, path=f"Opacus {opacus.__version__} grad_sample_mode={mode}")


def opacus_hooks(spec: peers.Spec) -> Dict:
    return _opacus(spec, "hooks")


def opacus_ghost(spec: peers.Spec) -> Dict:
    return _opacus(spec, "ghost")
