"""G networks of one architecture as one network of G groups (the batched network of :mod:`sslnb.grid`).

Built from G ordinary modules whose module trees have the same paths (the runs of a grid), leaf by leaf:

- ``Conv2d`` -> one convolution with G times the channels and ``groups=G`` (member g owns output
  channels ``g*C:(g+1)*C``). A convolution of the image itself (3 input channels) takes the images once
  when every member sees the same batch (``shared_input``: an ordinary convolution to G*C channels) and
  the members' images side by side on the channel axis otherwise (B, G*3, H, W).
- ``BatchNorm`` -> one BatchNorm over G*C channels: BatchNorm is per channel, so each member keeps its
  own statistics (ghost chunks split the batch, as before). Where some members have no BatchNorm at
  that place (a BYOL BN code with a 0), :class:`SwitchedBatchNorm` passes their channels through
  unchanged and pins their unused scale and shift at 1 and 0; where some have no learned scale and
  shift (``bn_affine`` off), it pins theirs at 1 and 0, which is a BatchNorm without them; where members
  split the batch into different numbers of ghost groups (``bn_groups``), each channel takes the
  normalisation with its member's chunks.
- ``Linear`` -> :class:`GroupedLinear`, G matrix products in one (B, G*in) -> (B, G*out).

Every activation is (B, G*features), member-major, so containers (``Sequential``, the ResNet, the heads)
run their own ``forward`` unchanged. Every batched tensor is the members' tensors stacked:
``tensor.reshape(G, *member_shape)[g]`` is member g's, which :meth:`GroupedNetwork.to_members` and
:meth:`GroupedNetwork.from_members` copy both ways (parameters, buffers and optimiser momenta).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .norm import GhostBatchNorm, GhostBatchNorm1d, GhostBatchNorm2d

IMAGE_CHANNELS = 3


class GroupedLinear(nn.Module):
    """G independent ``Linear(in_features, out_features)``. x (B, G*in) -> (B, G*out)."""

    def __init__(self, groups: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.groups, self.in_features, self.out_features = groups, in_features, out_features
        self.weight = nn.Parameter(torch.empty(groups, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(groups, out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = x.reshape(b, self.groups, self.in_features).transpose(0, 1)  # (G, B, in)
        if self.bias is None:
            y = torch.bmm(x, self.weight.transpose(1, 2))
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))
        return y.transpose(0, 1).reshape(b, self.groups * self.out_features)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, in_features={self.in_features}, out_features={self.out_features}"


class _Switched:
    """A grouped BatchNorm whose members differ: only some have it (the others' channels pass through
    unchanged), only some learn its scale and shift, or they split the batch into different numbers of
    ghost groups. ``present`` (G,) says which members have it, ``learned`` (G,) which of them learn its
    scale and shift, ``ghosts`` (G,) each member's ghost groups. Same parameter names as the BatchNorm it
    extends."""

    ghost_counts: tuple[int, ...] = ()  # the members' different ghost-group counts, when they differ

    def set_present(self, present: list[bool], learned: list[bool] | None = None, ghosts: list[int] | None = None) -> None:
        self.register_buffer("present", torch.tensor(present), persistent=False)
        self.register_buffer("learned", torch.tensor(present if learned is None else learned), persistent=False)
        if ghosts is not None and len(set(ghosts)) > 1:  # each channel's count: its member's
            self.ghost_counts = tuple(sorted(set(ghosts)))
            self.register_buffer("ghosts", torch.tensor(ghosts).repeat_interleave(self.num_features // len(ghosts)),
                                 persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._mixed_ghosts(x) if self.ghost_counts and self.training else super().forward(x)
        if bool(self.present.all()):
            return y
        g = len(self.present)
        keep = self.present.repeat_interleave(x.shape[1] // g).view(1, -1, *([1] * (x.dim() - 2)))
        return torch.where(keep, y, x)

    def _mixed_ghosts(self, x: torch.Tensor) -> torch.Tensor:
        """Training BatchNorm where members split the batch into different numbers of ghost groups: every
        count's normalisation over all channels, each channel then taking its member's (as GhostBatchNorm
        does for one member: the running statistics come from the first chunk). Selecting whole tensors
        is faster than normalising blocks of channels apart (measured: bench/RESULTS.md)."""
        self._check_input_dim(x)
        self.num_batches_tracked.add_(1)
        y = mean = var = None
        for k in self.ghost_counts:
            rm, rv = self.running_mean.clone(), self.running_var.clone()
            chunks = x.chunk(k) if k > 1 and x.shape[0] >= 2 * k else [x]
            yk = torch.cat([F.batch_norm(chunks[0], rm, rv, self.weight, self.bias, True, self.momentum, self.eps)]
                           + [F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps) for c in chunks[1:]])
            mine = self.ghosts == k
            y = yk if y is None else torch.where(mine.view(1, -1, *([1] * (x.dim() - 2))), yk, y)
            mean, var = (rm, rv) if mean is None else (torch.where(mine, rm, mean), torch.where(mine, rv, var))
        with torch.no_grad():
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
        return y

    @torch.no_grad()
    def pin_absent(self) -> None:
        """Hold the scale at 1 and shift at 0 of the members that do not learn them (weight decay would
        move them): a member without this BatchNorm's scale and shift computes what its own run does, and
        an EMA target that copies them by name stays exactly where the member's own run keeps it."""
        if self.affine:
            fixed = ~self.learned
            self.weight.view(len(fixed), -1)[fixed] = 1.0
            self.bias.view(len(fixed), -1)[fixed] = 0.0


class SwitchedBatchNorm1d(_Switched, GhostBatchNorm1d):
    """:class:`~sslnb.norm.GhostBatchNorm1d` over G*C features, applied to the members in ``present``."""


class SwitchedBatchNorm2d(_Switched, GhostBatchNorm2d):
    """:class:`~sslnb.norm.GhostBatchNorm2d` over G*C channels, applied to the members in ``present``."""


def _grouped_leaf(mods: list[nn.Module], shared_input: bool) -> nn.Module | None:
    """The batched module for the members' modules ``mods`` at one path, or None for a container."""
    g, first = len(mods), mods[0]
    if isinstance(first, nn.Conv2d):
        c = first
        image = c.in_channels == IMAGE_CHANNELS and c.groups == 1
        shared = image and shared_input
        conv = nn.Conv2d(c.in_channels * (1 if shared else g), c.out_channels * g, c.kernel_size, c.stride,
                         c.padding, c.dilation, groups=c.groups * (1 if shared else g), bias=c.bias is not None)
        return conv.requires_grad_(c.weight.requires_grad)
    if isinstance(first, nn.Linear):
        lin = GroupedLinear(g, first.in_features, first.out_features, first.bias is not None)
        return lin.requires_grad_(first.weight.requires_grad)
    bns = [m for m in mods if isinstance(m, GhostBatchNorm)]
    if bns:
        like = bns[0]
        if not all(isinstance(m, (GhostBatchNorm, nn.Identity)) for m in mods):
            raise ValueError(f"cannot batch {type(like).__name__} with {[type(m).__name__ for m in mods]}")
        present = [isinstance(m, GhostBatchNorm) for m in mods]
        learned = [p and m.affine for p, m in zip(present, mods)]
        ghosts = [m.groups if p else like.groups for p, m in zip(present, mods)]
        switched = not all(present) or (any(learned) and learned != present) or len(set(ghosts)) > 1
        two_d = isinstance(like, GhostBatchNorm2d)
        if switched:
            kind = SwitchedBatchNorm2d if two_d else SwitchedBatchNorm1d
        else:
            kind = GhostBatchNorm2d if two_d else GhostBatchNorm1d
        affine = next((m for m in bns if m.affine), None)
        bn = kind(like.num_features * g, like.groups, affine=affine is not None, eps=like.eps, momentum=like.momentum)
        if switched:
            bn.set_present(present, learned, ghosts)
        return bn.requires_grad_(affine.weight.requires_grad if affine is not None else False)
    if isinstance(first, (nn.BatchNorm1d, nn.BatchNorm2d)):
        raise ValueError("plain BatchNorm layers are not batched; build networks from sslnb.norm")
    return None


class GroupedNetwork:
    """The batched network of ``members`` (G modules with the same module paths), and the copies
    between it and the members.

    ``network`` is a deep copy of the first member with every Conv2d, Linear and BatchNorm replaced by
    its batched form (see the module docstring); modules of other kinds (an InsDis memory bank, say)
    stay the first member's copy, unused by the batched step, and the members keep their own.
    """

    def __init__(self, members: list[nn.Module], shared_input: bool):
        self.members, self.groups = list(members), len(members)
        self.network = copy.deepcopy(members[0])
        self.batched: set[str] = set()  # names of batched parameters and buffers
        self.switched: list[_Switched] = []
        paths = [dict(m.named_modules()) for m in members]
        for path, _ in list(self.network.named_modules()):
            mods = [p.get(path) for p in paths]
            if any(m is None for m in mods):
                raise ValueError(f"the runs' networks differ at {path!r}; they cannot be batched")
            leaf = _grouped_leaf(mods, shared_input) if path else None
            if leaf is None:
                continue
            parent, _, name = path.rpartition(".")
            setattr(self.network.get_submodule(parent) if parent else self.network, name, leaf)
            if isinstance(leaf, _Switched):
                self.switched.append(leaf)
            self.batched.update(f"{path}.{n}" for n, _ in leaf.named_parameters())
            self.batched.update(f"{path}.{n}" for n, _ in leaf.named_buffers()
                                if not n.endswith(("num_batches_tracked", "present", "learned", "ghosts")))
        self.from_members()

    def _tensors(self) -> dict[str, torch.Tensor]:
        named = dict(self.network.named_parameters())
        named.update(self.network.named_buffers())
        return named

    @torch.no_grad()
    def from_members(self) -> None:
        """Copy the members' parameters and buffers into the batched network (a member without a
        BatchNorm contributes that BatchNorm's initial state)."""
        states = [m.state_dict() for m in self.members]
        for name, t in self._tensors().items():
            if name in self.batched:
                parts = [s.get(name) for s in states]
                like = next(p for p in parts if p is not None)
                parts = [p if p is not None else _initial_bn_value(name, like) for p in parts]
                t.copy_(torch.stack(parts).reshape(t.shape))
            elif name.endswith("num_batches_tracked"):
                counts = [s[name] for s in states if name in s]
                if counts:
                    t.copy_(counts[0])
        self.pin()

    @torch.no_grad()
    def to_members(self) -> None:
        """Copy the batched network's parameters and buffers back into the members."""
        tensors = self._tensors()
        for g, member in enumerate(self.members):
            own = dict(member.named_parameters())
            own.update(member.named_buffers())
            for name, t in tensors.items():
                target = own.get(name)
                if target is None:
                    continue
                if name in self.batched:
                    target.copy_(t.reshape(self.groups, *target.shape)[g])
                elif name.endswith("num_batches_tracked"):
                    target.copy_(t)

    def pin(self) -> None:
        for sw in self.switched:
            sw.pin_absent()

    # -- optimiser state (momentum buffers, in the members' optimisers' own format)
    def optimizer_state_to_member(self, opt: torch.optim.Optimizer, g: int, member_opt: torch.optim.Optimizer) -> dict:
        """The state dict of member g's own optimiser ``member_opt`` (over the member's trainable
        parameters, as its single run builds it), with the batched optimiser ``opt``'s state sliced."""
        by_name = {id(p): n for n, p in self.network.named_parameters()}
        batched_state = {by_name[id(p)]: s for p, s in opt.state.items()}
        member_names = {id(p): n for n, p in self.members[g].named_parameters()}
        state = member_opt.state_dict()
        for group, batched_group in zip(state["param_groups"], opt.param_groups):  # momentum, ... (each run
            group.update({k: v for k, v in batched_group.items() if k not in ("params", "lr", "lr_mult")})  # its own rate)
        params = [p for group in member_opt.param_groups for p in group["params"]]
        for i, p in enumerate(params):
            s = batched_state.get(member_names[id(p)])
            if s is None:
                continue
            state["state"][i] = {k: (v.reshape(self.groups, *p.shape)[g].clone() if torch.is_tensor(v) and v.dim() else v)
                                 for k, v in s.items()}
        return state

    @torch.no_grad()
    def optimizer_state_from_members(self, opt: torch.optim.Optimizer, member_states: list[dict],
                                     member_opts: list[torch.optim.Optimizer]) -> None:
        """Fill the batched optimiser's state from the members' optimiser state dicts (on resume)."""
        per_name: list[dict] = []
        for member, st, mopt in zip(self.members, member_states, member_opts):
            names = {id(p): n for n, p in member.named_parameters()}
            params = [p for group in mopt.param_groups for p in group["params"]]
            per_name.append({names[id(p)]: st["state"].get(i, st["state"].get(str(i))) for i, p in enumerate(params)})
        for name, p in self.network.named_parameters():
            if not p.requires_grad:
                continue
            entries = [d.get(name) for d in per_name]
            if all(e is None for e in entries):
                continue
            like = next(e for e in entries if e is not None)
            state = {}
            for k, v in like.items():
                if torch.is_tensor(v) and v.dim():
                    parts = [e[k] if e is not None else torch.zeros_like(v) for e in entries]
                    state[k] = torch.stack(parts).reshape(p.shape).to(p.device).contiguous(memory_format=_format(p))
                else:
                    state[k] = v
            opt.state[p] = state


def _format(t: torch.Tensor):
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def _initial_bn_value(name: str, like: torch.Tensor) -> torch.Tensor:
    """A BatchNorm tensor's initial value (weight 1, bias 0, running mean 0, running variance 1)."""
    leaf = name.rsplit(".", 1)[-1]
    return torch.ones_like(like) if leaf in ("weight", "running_var") else torch.zeros_like(like)
