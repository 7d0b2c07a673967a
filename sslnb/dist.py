"""Everything about running one training run on several processes: the only module that imports
``torch.distributed``.

``torchrun --nproc_per_node=N -m sslnb.train ...`` starts N processes with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in their environment; :func:`init` joins them (NCCL on GPUs, gloo on CPUs). Without
those variables every function here is the identity (one process), so the same training code runs on
a laptop and under torchrun.

The seed trained on 4 GPUs with ``nn.DataParallel``, where one process computed the loss on the whole
batch. The collectives below make N processes compute the same thing:

- :func:`gather_with_grad` concatenates a tensor from every rank and sends gradients back to their
  owners, so a loss over all ranks' samples (SimCLR's negatives) has the one-process gradient once DDP
  averages it;
- :func:`gather` (no gradient) shares what every rank must see identically (InsDis memory-bank rows);
- :func:`configure_batchnorm` gives BatchNorm the statistics the config names (``dist_bn``).
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import sys

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError
from .norm import GhostBatchNorm

# How long a rank waits in a collective for the others before it gives up (a dead peer).
TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("SSLNB_DIST_TIMEOUT", "1800")))


# ---------------------------------------------------------------------- helper processes
# prctl looked up once, here: die_with_parent may run between fork and exec, where loading a library is unsafe
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Make this process (a worker the library started) get SIGKILL when its parent dies, however the
    parent dies (Linux's ``PR_SET_PDEATHSIG``; elsewhere nothing). Chapters' kernels follow their worker
    on their own (ipykernel polls its parent), and interrupted runs resume, so nothing is left behind
    holding memory or run directories. Call it first thing in the child (a pool's ``initializer``, a
    ``preexec_fn``); ``parent_pid`` is checked afterwards in case the parent died before."""
    if _PRCTL is None:
        return
    _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------- process group
def launched() -> bool:
    """True when this process was started by torchrun (or another launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda where a GPU is visible, else cpu; a cuda device asked for where none is visible is
    a one-line :class:`~sslnb.config.ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is not allowed here: no CUDA device is visible; use cpu or auto")
    return torch.device(name)


def init(device: str = "auto", rank: int | None = None, world_size: int | None = None,
         init_method: str | None = None) -> torch.device:
    """Join the process group if there is one; return this process's device.

    With no arguments the rank and world size come from torchrun's environment. Tests pass them
    explicitly with a ``tcp://`` or ``file://`` ``init_method``. On GPUs each process takes
    ``cuda:LOCAL_RANK``; on CPUs the backend is gloo.
    """
    resolved = resolve_device(device)
    if world_size is None and not launched():
        return resolved
    if dist.is_initialized():
        return _rank_device(resolved)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    kwargs = {"backend": backend, "timeout": TIMEOUT}
    if world_size is not None:
        kwargs.update(rank=rank, world_size=world_size, init_method=init_method or "env://")
    device = _rank_device(resolved)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    return device


def _rank_device(resolved: torch.device) -> torch.device:
    if resolved.type != "cuda":
        return resolved
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 writes the run directory and prints; the other ranks only train."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def record(fn):
    """torchrun's error recorder: a failing rank's exception is reported by the launcher as the root
    cause (the other ranks are stopped instead of waiting forever)."""
    from torch.distributed.elastic.multiprocessing.errors import record as _record

    return _record(fn)


# ---------------------------------------------------------------------- collectives
class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        # Every rank's loss used every rank's rows: the gradient of the sum of the ranks' losses
        # with respect to this rank's rows is the sum of the gradients the ranks computed for them.
        return _AllReduceWithGrad.backward(ctx, grad).chunk(dist.get_world_size())[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(b, ...) on each of N ranks -> (N b, ...), rank order, differentiable. Identity on one process."""
    return _GatherWithGrad.apply(x) if world_size() > 1 else x


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """(b, ...) on each of N ranks -> (N b, ...) in rank order, without gradient."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (every rank gets it)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


@torch.no_grad()
def broadcast_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if world_size() == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, 0)


@torch.no_grad()
def same_on_all_ranks(t: torch.Tensor) -> bool:
    """Whether ``t`` is bitwise identical on every rank (for tests and checks)."""
    if world_size() == 1:
        return True
    ref = t.detach().clone()
    dist.broadcast(ref, 0)
    ok = torch.tensor(float(torch.equal(ref, t.detach())))
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


class _AllReduceWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def wrap(method: nn.Module) -> nn.Module:
    """``DistributedDataParallel`` around the method when there are several ranks (gradients are
    averaged over ranks after ``backward``); the method itself otherwise.

    Buffers are not broadcast at every forward: the BatchNorm running statistics that are saved and
    evaluated are rank 0's (as the seed's DataParallel kept only replica 0's), and the memory bank is
    kept identical by the method itself.
    """
    if world_size() == 1:
        return method
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [torch.cuda.current_device()] if next(method.parameters()).is_cuda else None
    return DistributedDataParallel(method, device_ids=device_ids, broadcast_buffers=False)


# ---------------------------------------------------------------------- BatchNorm across ranks
class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are over the samples of every rank, on any device and
    backend (``nn.SyncBatchNorm`` supports GPUs only; it is used there instead). Works for (B, C) and
    (B, C, H, W). Outside training, or on one process, it is plain BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        n_local = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = _AllReduceWithGrad.apply(torch.cat([x.sum(dims), (x * x).sum(dims), n_local]))
        c = x.shape[1]
        n = stats[-1]
        mu = stats[:c] / n
        var = stats[c:2 * c] / n - mu * mu  # biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mu.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
                self.num_batches_tracked.add_(1)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mu.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def bn_batch(batch_size: int, bn_groups: int, mode: str, world: int) -> int:
    """How many images one BatchNorm normalises together in training."""
    if mode == "sync":
        return batch_size
    if mode == "local":
        return batch_size // world
    return batch_size // bn_groups


def configure_batchnorm(module: nn.Module, mode: str, bn_groups: int) -> nn.Module:
    """Give every BatchNorm of ``module`` the training statistics ``dist_bn = mode`` names, for the
    current number of ranks N (the global batch B is split evenly over the ranks in rank order):

    - ``groups``: over B / bn_groups images whatever N is: each rank's ghost BN splits its B / N images
      into bn_groups / N groups (N = 4, bn_groups = 4 is the seed's 4-GPU DataParallel exactly);
    - ``local``: over each rank's own B / N images (DDP's default; bn_groups is not used);
    - ``sync``: over all B images (SyncBatchNorm).

    Returns the module (changed in place, or with BN layers replaced for ``sync``).
    """
    world = world_size()
    if mode == "groups":
        if bn_groups % world:
            raise ValueError(f"dist_bn=groups needs bn_groups={bn_groups} to be a multiple of the {world} "
                             f"processes; use dist_bn=local or sync, or another bn_groups")
        per_rank = bn_groups // world
    else:
        per_rank = 1
    for m in module.modules():
        if isinstance(m, GhostBatchNorm):
            m.groups = per_rank
    if mode == "sync" and world > 1:
        module = _convert_sync(module)
    return module


def _convert_sync(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        on_gpu = module.running_mean is not None and module.running_mean.is_cuda
        cls = nn.SyncBatchNorm if on_gpu else SyncBatchNorm
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new.to(module.running_mean.device if module.running_mean is not None else "cpu")
    for name, child in module.named_children():
        module.add_module(name, _convert_sync(child))
    return module
