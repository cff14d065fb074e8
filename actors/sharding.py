"""How the learner ranks share the policy: one rank, replicated ranks (gradients summed over a gloo /
NCCL group, as DDP does), or fully sharded ranks (FSDP2). Every difference between the three lives
here, so the learner reads the same for all of them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from actors.policy_model import adapter_parameters


@dataclass
class Sharding:
    rank: int = 0
    world: int = 1
    fsdp: bool = False

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def forwards_to_run(self, mine: int) -> int:
        """Under FSDP every forward is a collective, so every rank runs as many as the busiest one."""
        return int(self.all_reduce(torch.tensor([mine]), op="max")[0]) if self.fsdp else mine

    def backward(self, loss: torch.Tensor) -> None:
        """Each rank's loss is its share of the global one; FSDP averages gradients over ranks, we want their sum."""
        (loss * self.world if self.fsdp else loss).backward()

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replicated ranks add their gradients up (FSDP has reduce-scattered them already)."""
        if self.world == 1 or self.fsdp:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.all_reduce(torch.cat([g.reshape(-1) for g in grads]))
        for p, g in zip(params, flat.split([g.numel() for g in grads])):
            p.grad = g.view_as(p)

    def shard(self, model, device: torch.device) -> None:
        """FSDP2: every decoder layer and the root hold 1/world of their weights, gathered per layer for
        each forward and backward. Every call that runs the model or reads its weights must then run on
        every rank (the driver sees to that)."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (self.world,))
        base = model.get_base_model()
        for module in [m for m in base.modules() if type(m).__name__ in base._no_split_modules]:
            fully_shard(module, mesh=mesh)
        fully_shard(base, mesh=mesh)
        self.fsdp = True

    def adapter_tensors(self, model) -> dict[str, torch.Tensor]:
        """The adapter in peft's format; under FSDP gathered whole on rank 0 (the other ranks get {})."""
        from peft import get_peft_model_state_dict

        if not self.fsdp:
            walk = adapter_parameters(model)
            return get_peft_model_state_dict(model) if walk is None else {key: param.detach() for key, param in walk.items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return get_peft_model_state_dict(model, state_dict=full) if full else {}

    def optimizer_state(self, model, optimizer) -> dict[str, Any]:
        if not self.fsdp:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load(self, model, optimizer, adapter: dict[str, torch.Tensor], optimizer_state: dict[str, Any]) -> None:
        """Whole adapter and optimizer state in; under FSDP each rank keeps its shard."""
        if not self.fsdp:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, adapter)
            optimizer.load_state_dict(optimizer_state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        names = {n.replace(".default.", "."): n for n, p in model.named_parameters() if p.requires_grad}
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, {names[k]: v for k, v in adapter.items()}, options=options)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)

    def write_adapter(self, model, path: Path) -> None:
        """peft's adapter directory (rank 0 writes; under FSDP every rank takes part in the gather)."""
        if not self.fsdp:
            model.save_pretrained(path)
            return
        from safetensors.torch import save_file

        tensors = self.adapter_tensors(model)
        if self.rank == 0:
            path.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "adapter_model.safetensors"))
            model.peft_config["default"].save_pretrained(str(path))
