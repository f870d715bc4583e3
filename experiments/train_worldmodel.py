"""Pre-train the action-conditioned dynamics transformer on tokenized rollouts.

    python experiments/train_worldmodel.py [dynamics=quick] [tokenizer_ckpt=...]
    python experiments/train_worldmodel.py init_ckpt=<worldmodel.pt> dynamics.train.steps=200 ...  # fine-tune
    torchrun --nproc_per_node 2 experiments/train_worldmodel.py dynamics=tiny   # DDP (gloo on CPU)

Tokenizes the training windows once (cached under ``artifacts/tokens``), trains with
next-token cross-entropy on dynamics tokens, and writes ``<out_dir>/last.pt``
(resumable training state) and ``<out_dir>/worldmodel.pt`` (tokenizer + dynamics,
everything needed to rebuild :class:`worldmodel.world_model.WorldModel`).
"""
from __future__ import annotations

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.common import resolve, rollout_paths, setup_torch
from worldmodel.dynamics import token_loss
from worldmodel.tokenizer import DualFSQTokenizer
from worldmodel.tokens import cached_tokens, file_hash
from worldmodel.training import cleanup_distributed, load_checkpoint, setup_distributed, train
from worldmodel.world_model import WorldModel


def _stream(data: dict, batch_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    n = len(data["ctx"])
    while True:
        idx = torch.randint(n, (batch_size,), generator=g)
        yield {k: v[idx] for k, v in data.items()}


def _loss(net, batch):
    """Teacher-forced token loss of ``net`` (the dynamics, maybe DDP-wrapped) on a batch;
    a model with proprio tokens reads and predicts the batch's proprio (B, T + 1, 4)."""
    dyn = getattr(net, "module", net)
    props = ()
    if dyn.cfg.proprio_bins:      # run() checked that the windows carry proprio
        p = dyn.proprio_tokens(batch["proprio"])
        props = (p[:, 0], p[:, 1:])
    return token_loss(net(batch["ctx"], batch["prev0"], batch["actions"], batch["tokens"], *props),
                      batch["tokens"], props[1] if props else None)


def _evaluate(model, val: dict, batch_size: int = 64) -> dict:
    sums, n = {}, len(val["ctx"])
    for i in range(0, n, batch_size):
        batch = {k: v[i:i + batch_size] for k, v in val.items()}
        for k, v in _loss(model, batch)[1].items():
            sums[k] = sums.get(k, 0.0) + v * len(batch["ctx"])
    return {k: v / n for k, v in sums.items()}


def proprio_range(proprio: torch.Tensor, margin: float = 0.05) -> tuple[list, list]:
    """The quantization range of predicted proprioception from the training windows' proprio
    (N, T + 1, 4): each feature's min and max, widened by ``margin`` of its span."""
    flat = proprio.reshape(-1, proprio.shape[-1]).double()
    lo, hi = flat.min(0).values, flat.max(0).values
    pad = (hi - lo).clamp(min=1e-3) * margin
    return [round(float(v), 4) for v in lo - pad], [round(float(v), 4) for v in hi + pad]


def _init_from(wm: WorldModel, path, tok_hash: str) -> str | None:
    """Fine-tuning: load the dynamics weights of the world model at ``path`` (same
    tokenizer, same architecture) into ``wm``; returns that file's hash (or ``None``)."""
    if not path:
        return None
    path = resolve(path)
    init = WorldModel.from_checkpoint(path)
    if init.dynamics.cfg.to_dict() != wm.dynamics.cfg.to_dict():
        raise ValueError(f"init_ckpt {path} holds dynamics {init.dynamics.cfg.to_dict()}, this config builds "
                         f"{wm.dynamics.cfg.to_dict()}; fine-tune with the same dynamics config")
    if init.action_repeat != wm.action_repeat:
        raise ValueError(f"init_ckpt {path} has action_repeat {init.action_repeat}, config {wm.action_repeat}")
    tok_diff = [k for k, v in init.tokenizer.state_dict().items()
                if not torch.equal(v, wm.tokenizer.state_dict()[k])]
    if tok_diff:
        raise ValueError(f"init_ckpt {path} was trained on another tokenizer than {tok_hash[:12]} "
                         f"({len(tok_diff)} tensors differ); fine-tune on the tokenizer it was built with")
    wm.dynamics.load_state_dict(init.dynamics.state_dict())
    return file_hash(path)


def run(cfg: DictConfig) -> dict:
    setup_torch(cfg.threads)
    dist = setup_distributed()
    try:
        tok_path = resolve(cfg.tokenizer_ckpt)
        tokenizer = DualFSQTokenizer.from_checkpoint(tok_path)
        tok_hash = file_hash(tok_path)
        paths = {s: rollout_paths(cfg.data[s], s, cfg.artifacts) for s in ("train", "val")}
        cache = resolve(cfg.artifacts) / "tokens"
        data = {}
        for split in ("train", "val"):  # main rank tokenizes (and caches) first
            if not dist.is_main:
                torch.distributed.barrier()
            data[split] = cached_tokens(tokenizer, tok_hash, paths[split], cfg.window, cfg.action_repeat,
                                        cfg.stride, cache, progress=dist.is_main)
            if dist.is_main and dist.world_size > 1:
                torch.distributed.barrier()
        if cfg.dynamics.max_windows:
            data["train"] = {k: v[: cfg.dynamics.max_windows] for k, v in data["train"].items()}
        val = {k: v[: cfg.val_windows] for k, v in data["val"].items()}

        model_cfg = OmegaConf.to_container(cfg.dynamics.model)
        if model_cfg.get("proprio_bins"):
            missing = [s for s in ("train", "val") if "proprio" not in data[s]]
            if missing:
                raise ValueError("dynamics.model.proprio_bins > 0 needs rollout files with obs/proprio; "
                                 f"{[str(p) for s in missing for p in paths[s]]} have none")
            if cfg.get("init_ckpt"):   # fine-tuning keeps the model's quantization
                init_dyn = load_checkpoint(resolve(cfg.init_ckpt), kind="worldmodel")["config"]["dynamics"]
                model_cfg["proprio_low"], model_cfg["proprio_high"] = (init_dyn.get("proprio_low", ()),
                                                                       init_dyn.get("proprio_high", ()))
            else:
                model_cfg["proprio_low"], model_cfg["proprio_high"] = proprio_range(data["train"]["proprio"])
        wm = WorldModel.build(tokenizer, model_cfg, cfg.action_repeat, cfg.swr_window)
        init = _init_from(wm, cfg.get("init_ckpt"), tok_hash)
        for p in wm.tokenizer.parameters():
            p.requires_grad_(False)
        tcfg = cfg.dynamics.train
        config = {"dynamics": wm.dynamics.cfg.to_dict(), "tokenizer_hash": tok_hash,
                  "window": cfg.window, "action_repeat": cfg.action_repeat, "stride": cfg.stride,
                  "data": {s: [str(p) for p in ps] for s, ps in paths.items()},
                  "train": OmegaConf.to_container(tcfg), "max_windows": cfg.dynamics.max_windows}
        if init:
            config["init"] = init
        out = resolve(cfg.out_dir)
        train(wm.dynamics, lambda start: _stream(data["train"], tcfg.batch_size, 7919 * start + dist.rank),
              _loss, steps=tcfg.steps, lr=tcfg.lr, out_dir=out, kind="dynamics", config=config,
              eval_fn=lambda m: _evaluate(m, val), eval_every=tcfg.eval_every, ckpt_every=tcfg.ckpt_every,
              log_every=tcfg.log_every, weight_decay=tcfg.weight_decay, warmup=tcfg.warmup,
              amp=cfg.amp, dist=dist)
        metrics = {}
        if dist.is_main:
            wm.dynamics.eval()
            with torch.no_grad():
                metrics = _evaluate(wm.dynamics, val)
            wm.save(out / "worldmodel.pt", metrics=metrics, upstream={"tokenizer": tok_hash})
            print(f"val ce {metrics['ce']:.3f} acc {metrics['acc']:.3f}; world model in {out / 'worldmodel.pt'}")
        return metrics
    finally:
        cleanup_distributed()


@hydra.main(config_path="conf", config_name="train_worldmodel", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
