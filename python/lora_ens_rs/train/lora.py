"""M LoRA members on one frozen model: stacked adapter matrices with an explicit member axis.

    stack = LoraStack.attach(base.model, n_members=3, rank=8, alpha=16,
                             targets=["q_proj", "v_proj"], layers=[28, 29], seeds=[0, 1, 2])
    y = stack.modules[(29, "q_proj")](x)  # x: (M, B, T, in) or (M * B, T, in), member-major
    with stack.disabled(): ...            # the base model alone
    with stack.select([1, 1, 1]): ...     # three copies of member 1 (MC-dropout samples)

Each adapted ``nn.Linear`` is replaced by a :class:`MultiLoraLinear` holding ``A`` (M, r, in)
and ``B`` (M, out, r). Its input carries the members on the leading axis; the frozen base
weight is applied once to the whole stack and each member adds
``scaling * (x_m A_m^T) B_m^T`` by batched matmul. A is initialised as PEFT does
(``kaiming_uniform_(a=sqrt(5))`` on each member's (r, in) matrix) from a generator seeded by
that member's seed, B is zero, so a batched run of M members equals M single-member runs.
In training, LoRA dropout draws each row's mask from its member's own generator
(:func:`dropout_generator`), so a member's masks do not depend on which members share its pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from lora_ens_rs.errors import InputError

#: Where each projection sits in a LLaMA decoder layer (also the PEFT key infix).
PARENT = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


class MultiLoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus M LoRA updates, one per member.

    Args:
        base: the frozen linear layer (no bias expected; a bias is applied once as usual).
        n_members: M.
        rank: r.
        alpha: LoRA alpha.
        dropout: dropout on the adapter input (active in training mode).
        rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
    """

    def __init__(
        self,
        base: nn.Linear,
        n_members: int,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        rslora: bool = False,
    ) -> None:
        super().__init__()
        self.base = base
        self.n_members = n_members
        self.rank = rank
        self.scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        self.lora_A = nn.Parameter(torch.zeros(n_members, rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(n_members, base.out_features, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True
        self._selected: torch.Tensor | None = None
        self._row_generators: list[torch.Generator] | None = None

    def reset_member(self, m: int, generator: torch.Generator) -> None:
        """PEFT's initialisation of member ``m``: A kaiming-uniform from ``generator``, B zero."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A[m], a=math.sqrt(5), generator=generator)
            self.lora_B[m].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x)`` plus each member's update on its slice of the leading axis.

        Args:
            x: (M, ..., in), or (M * B, ..., in) with member ``m`` in rows ``m*B:(m+1)*B``.

        Returns:
            Same leading shape as ``x``, last dimension ``out``.
        """
        y = self.base(x)
        if not self.enabled:
            return y
        a, b = self.lora_A, self.lora_B
        if self._selected is not None:
            a, b = a[self._selected], b[self._selected]
        m = a.shape[0]
        if x.shape[0] % m:
            raise InputError(
                f"the leading axis ({x.shape[0]}) is not a multiple of the {m} members"
            )
        # The adapters stay fp32 on a bf16/fp16 base: the update is computed in fp32.
        xs = self._dropout(x).reshape(m, -1, x.shape[-1]).to(a.dtype)
        delta = torch.bmm(torch.bmm(xs, a.transpose(1, 2)), b.transpose(1, 2))
        return y + (self.scaling * delta).reshape(y.shape).to(y.dtype)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout on the adapter input; with row generators, row i's mask comes from the i-th.

        Per-row generators make a member's masks a function of its own stream and its rows'
        (padded) shapes, not of the rows of other members in the same pass.
        """
        gens = self._row_generators
        if gens is None or not self.training or not isinstance(self.dropout, nn.Dropout):
            return self.dropout(x)
        p = self.dropout.p
        if len(gens) != x.shape[0]:
            raise InputError(f"{len(gens)} dropout generators for {x.shape[0]} rows")
        keep = torch.empty((x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        for i, generator in enumerate(gens):  # (T, in) per row, drawn in row order
            keep[i].bernoulli_(1.0 - p, generator=generator)
        return x * keep / (1.0 - p)


def dropout_generator(seed: int) -> torch.Generator:
    """The LoRA dropout stream of the member with ``seed`` in training.

    Seeded from (seed, a fixed stream tag), so it is independent of the A initialisation
    drawn from ``manual_seed(seed)`` and of any other member.
    """
    tag = 0x64726F70  # "drop"
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, tag])
    return torch.Generator().manual_seed(int(state.generate_state(1, np.uint64)[0]))


class LoraStack:
    """The :class:`MultiLoraLinear` modules attached to one model, keyed by (layer, target)."""

    def __init__(self, modules: dict[tuple[int, str], MultiLoraLinear], n_members: int) -> None:
        self.modules = modules
        self.n_members = n_members

    @classmethod
    def attach(
        cls,
        model: nn.Module,
        *,
        n_members: int,
        rank: int,
        alpha: float,
        targets: Sequence[str],
        layers: Sequence[int],
        seeds: Sequence[int],
        dropout: float = 0.0,
        rslora: bool = False,
    ) -> LoraStack:
        """Replace the targeted projections of ``model`` (a transformers LLaMA) in place.

        Args:
            model: the causal LM (``model.model.layers[i].self_attn.q_proj`` ...).
            n_members: M.
            rank: r.
            alpha: LoRA alpha.
            targets: projection names.
            layers: layer indices.
            seeds: one per member; member m's A matrices are drawn, module by module in
                (layer, target) order, from ``torch.Generator().manual_seed(seeds[m])``.
            dropout: LoRA dropout.
            rslora: rank-stabilised scaling.

        Returns:
            The stack.

        Raises:
            InputError: a target is not an ``nn.Linear`` of the model, or wrong seed count.
        """
        if len(seeds) != n_members:
            raise InputError(f"{len(seeds)} seeds for {n_members} members")
        decoder_layers = model.model.layers
        modules: dict[tuple[int, str], MultiLoraLinear] = {}
        for i in sorted(layers):
            for target in targets:
                parent = getattr(decoder_layers[i], PARENT.get(target, ""), None)
                linear = getattr(parent, target, None) if parent is not None else None
                if isinstance(linear, MultiLoraLinear):
                    raise InputError(f"layer {i} {target} already has adapters")
                if not isinstance(linear, nn.Linear):
                    raise InputError(f"layer {i} has no linear projection {target!r}")
                wrapped = MultiLoraLinear(linear, n_members, rank, alpha, dropout, rslora)
                setattr(parent, target, wrapped)
                modules[(i, target)] = wrapped
        stack = cls(modules, n_members)
        stack.reset(seeds)
        return stack

    def reset(self, seeds: Sequence[int]) -> None:
        """Initialise every member from its seed (see :meth:`attach`)."""
        for m, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(int(seed))
            for key in sorted(self.modules):
                self.modules[key].reset_member(m, generator)

    def detach(self, model: nn.Module) -> None:
        """Put the original projections back into ``model``."""
        for (i, target), module in self.modules.items():
            setattr(getattr(model.model.layers[i], PARENT[target]), target, module.base)

    @property
    def first_layer(self) -> int:
        """The lowest adapted layer: everything below it is shared by all members."""
        return min(i for i, _ in self.modules)

    @property
    def layers(self) -> list[int]:
        """Adapted layers, sorted."""
        return sorted({i for i, _ in self.modules})

    @property
    def targets(self) -> list[str]:
        """Adapted projections, in the order they were given."""
        return list(dict.fromkeys(t for _, t in self.modules))

    def parameters(self) -> list[nn.Parameter]:
        """Trainable tensors in a fixed order: A then B of each module, (layer, target) order."""
        out: list[nn.Parameter] = []
        for key in sorted(self.modules):
            out += [self.modules[key].lora_A, self.modules[key].lora_B]
        return out

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """``"{layer}.{target}.lora_A"`` / ``".lora_B"`` -> the stacked tensor (live)."""
        out: dict[str, torch.Tensor] = {}
        for (i, target), module in sorted(self.modules.items()):
            out[f"{i}.{target}.lora_A"] = module.lora_A
            out[f"{i}.{target}.lora_B"] = module.lora_B
        return out

    def state(self) -> dict[str, torch.Tensor]:
        """A detached copy of every stacked tensor (see :meth:`named_tensors`)."""
        return {k: v.detach().clone() for k, v in self.named_tensors().items()}

    def load_state(
        self, state: dict[str, torch.Tensor], members: Sequence[int] | None = None
    ) -> None:
        """Copy tensors from :meth:`state` back, for all members or only ``members``.

        Raises:
            InputError: ``state`` does not hold the same tensors.
        """
        live = self.named_tensors()
        if set(state) != set(live):
            raise InputError("adapter state does not match the attached modules")
        with torch.no_grad():
            for key, tensor in live.items():
                if tensor.shape != state[key].shape:
                    raise InputError(f"adapter state {key}: shape {tuple(state[key].shape)}")
                if members is None:
                    tensor.copy_(state[key])
                else:
                    for m in members:
                        tensor[m].copy_(state[key][m])

    def train(self, mode: bool = True) -> None:
        """Training mode switches LoRA dropout on."""
        for module in self.modules.values():
            module.train(mode)

    def set_dropout(self, p: float) -> None:
        """Set the dropout probability of every module (0 removes it)."""
        for module in self.modules.values():
            module.dropout = nn.Dropout(p) if p > 0 else nn.Identity()

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model alone (inputs without a member axis)."""
        for module in self.modules.values():
            module.enabled = False
        try:
            yield
        finally:
            for module in self.modules.values():
                module.enabled = True

    @contextmanager
    def select(
        self, members: Sequence[int], generators: Sequence[torch.Generator] | None = None
    ) -> Iterator[None]:
        """Run with the listed members (repeats allowed) as the member axis.

        Args:
            members: the member of each slot of the leading axis.
            generators: one dropout generator per member of the stack (training: each row's
                dropout mask is drawn from its member's generator); None: torch's global RNG.
        """
        index = torch.tensor(list(members), dtype=torch.long)
        if len(index) == 0 or index.min() < 0 or index.max() >= self.n_members:
            raise InputError(f"members {list(members)} out of range 0..{self.n_members - 1}")
        rows = None if generators is None else [generators[int(m)] for m in members]
        for module in self.modules.values():
            module._selected, module._row_generators = index, rows
        try:
            yield
        finally:
            for module in self.modules.values():
                module._selected, module._row_generators = None, None

    def norms(self) -> list[float]:
        """Each member's Frobenius norm over all its A and B matrices."""
        total = torch.zeros(self.n_members, dtype=torch.float64)
        for p in self.parameters():
            total += p.detach().double().pow(2).flatten(1).sum(1)
        return total.sqrt().tolist()
