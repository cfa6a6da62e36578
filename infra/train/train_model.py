#!/usr/bin/env python3
"""Train easel's bundled model from scratch on procedural scenes and export it to ONNX.

The model is the Stable Diffusion architecture at a small size: diffusers' AutoencoderKL,
UNet2DConditionModel and transformers' CLIPTextModel, with the real CLIP BPE tokenizer, so easel's
pipeline, samplers and moderation run it unchanged. Stages:

1. render the dataset (scenes.py), deterministic from --seed;
2. train the VAE (L1 + MSE reconstruction weighted toward the objects, a small KL term), then fix
   its latent scaling factor and report its ceiling (the judge on ground truth through the VAE);
3. train the text encoder and the UNet jointly (v-prediction, min-SNR-5 loss weighting,
   caption dropout for classifier-free guidance) on the VAE's latents;
4. export the diffusers/optimum ONNX folder (every config.json, tokenizer files, scheduler config),
   shrinking the token embedding table to the tokens the captions use;
5. evaluate adherence on held-out captions with judge.py and write the report.

Each stage has a budget in steps (the default, deterministic: the same weights on any machine with the
same instruction set, for a seed and thread count) or in minutes; the script prints losses as it goes.

Usage (normally through infra/train/train.sh):
    python infra/train/train_model.py --bpe bpe_simple_vocab_16e6.txt.gz --out models/easel-shapes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "infra" / "models"))

import judge  # noqa: E402
import make_tiny_model as tiny  # noqa: E402  (tokenizer, ONNX wrappers and export)
import scenes  # noqa: E402

SIZE = 64  # native image side
TEXT = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=64,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
           up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[32, 64, 64], layers_per_block=1,
           latent_channels=4, norm_num_groups=16, sample_size=SIZE, mid_block_add_attention=False)
# Self- and cross-attention at the 8x8 and 4x4 levels and in the mid block. At 16x16, self-attention
# took over half of each training step on this CPU (softmax over 256x256 per head), so the first
# down block attends only to the caption (`only_cross_attention`: both of its attentions read the 77
# caption states, 256x77): each latent pixel reads the shape and color words directly, for about 1 %
# more time per step. Its output reaches the 16x16 up block through the skip connection; a 16x16 up
# block with attention cost 30 % more per step.
UNET = dict(sample_size=SIZE // 4, in_channels=4, out_channels=4,
            down_block_types=["CrossAttnDownBlock2D"] * 3,
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            only_cross_attention=[True, False, False],
            mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=[64, 64, 128], layers_per_block=1,
            norm_num_groups=32, cross_attention_dim=64, attention_head_dim=(4, 8, 8))
# Heads per down block (diffusers' `attention_head_dim` is the number of heads; the up blocks mirror
# it): 4 heads of 8 channels in the 16x16 block's caption attention, 8 heads of 8 and 16 channels
# below it. With 8 heads of 4 channels the 16x16 block's softmax over 8 x 256 x 77 scores was the
# largest single cost: (4, 8, 8) makes a training step about 20 % cheaper (0.84 s against 1.02-1.11
# on 2 cores, measured interleaved on 2026-12-06).
# The 16x16 level has 64 channels, as many as the 8x8 one: with 32 there, small shapes (a star, a
# cross, a circle at 9 pixels) were the last thing the UNet learned, and two-object prompts
# followed the number of images seen, not the steps. 64 channels cost about a quarter more per step and
# learn them in fewer images: 2300 steps of them beat 3846 of the narrow UNet (infra/train/README.md,
# the nineteenth to twenty-first runs). Checkpoints from before record no channels and get
# (32, 64, 128).
# v-prediction: at high noise its target is mostly the clean image, so the loss rewards reading the
# caption exactly where the caption decides the picture (an epsilon loss barely changes there).
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="v_prediction", steps_offset=1, timestep_spacing="trailing")


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


# --- data ----------------------------------------------------------------------------------------

def make_dataset(n: int, seed: int, held_out: set, two_objects: float):
    rng = np.random.default_rng(seed)
    data = [scenes.random_scene(rng, held_out, two_objects) for _ in range(n)]
    imgs = np.stack([scenes.render(s, SIZE, rng) for s in data])
    return data, imgs


def to_tensor(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class Tokens:
    """CLIP token ids for captions, padded to 77 as easel's pipeline pads them."""

    def __init__(self, tok):
        self.tok = tok
        self.cache: dict[str, list[int]] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        out = []
        for c in captions:
            if c not in self.cache:
                self.cache[c] = self.tok(c, padding="max_length", max_length=77, truncation=True)["input_ids"]
            out.append(self.cache[c])
        return torch.tensor(out, dtype=torch.int64)


class Labels:
    """scenes.parse_caption for a batch of captions, as a (batch, 10) tensor of label indices."""

    def __init__(self):
        self.cache: dict[str, list[int]] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        for c in captions:
            if c not in self.cache:
                self.cache[c] = list(scenes.parse_caption(c).values())
        return torch.tensor([self.cache[c] for c in captions], dtype=torch.int64)


class CaptionProbe(torch.nn.Module):
    """A linear read-out of every label of a caption from the mean of the text encoder's output
    states: the mean is what cross-attention sees while its attention is still uniform."""

    def __init__(self, width: int):
        super().__init__()
        self.classes = [len(scenes.LABELS["background"]), len(scenes.LABELS["count"])] + [
            len(v) for _ in range(2) for v in scenes.OBJECT_LABELS.values()]
        self.head = torch.nn.Linear(width, sum(self.classes))

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor):
        """(loss, accuracy) over the labels the captions state (-1 = not stated)."""
        logits = self.head(hidden.mean(dim=1)).split(self.classes, dim=1)
        loss, right, stated = hidden.new_zeros(()), 0, 0
        for k, lg in enumerate(logits):
            y = labels[:, k]
            mask = y >= 0
            if mask.any():
                loss = loss + F.cross_entropy(lg[mask], y[mask], reduction="sum")
                right += int((lg[mask].argmax(1) == y[mask]).sum())
                stated += int(mask.sum())
        return loss / max(stated, 1), right / max(stated, 1)


# --- training ------------------------------------------------------------------------------------

class Budget:
    """How long a phase trains: a fixed number of steps (the default), or minutes of wall time.
    With steps the weights are the same on any machine for the same seed and thread count; with
    minutes the step count, and so the weights, depend on the machine's speed. The learning-rate
    schedules follow `fraction`."""

    def __init__(self, minutes: float, steps: int | None = None):
        self.minutes, self.steps, self.start = minutes, steps, time.time()

    def fraction(self, step: int) -> float:
        if self.steps is not None:
            return step / max(1, self.steps)
        return (time.time() - self.start) / (self.minutes * 60)

    def left(self, step: int) -> bool:
        return self.fraction(step) < 1.0


def pretrain_text(text, probe, data, tokens: Tokens, labels: Labels, minutes, batch, seed, probe_only=False,
                  steps=None):
    """Train the text encoder alone to state each caption's labels (through the probe) before the
    UNet sees it. Without this, joint training from scratch collapses the encoder's outputs to a
    constant within 50 steps (random text features are noise to a young UNet, and the cheapest way
    to silence noise is to output nothing), after which no caption can be learned.
    `probe_only` fits a fresh probe to a trained encoder, which stays as it is (--resume)."""
    rng = np.random.default_rng(seed)
    params = list(probe.parameters()) + ([] if probe_only else list(text.parameters()))
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    budget, step = Budget(minutes, steps), 0
    text.train(not probe_only)
    while budget.left(step):
        caps = [scenes.caption(data[i], rng) for i in rng.integers(0, len(data), batch)]
        with torch.set_grad_enabled(not probe_only):
            hidden = text(input_ids=tokens(caps)).last_hidden_state
        loss, acc = probe(hidden, labels(caps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            log(f"text step {step} loss {loss.item():.4f} label accuracy {acc:.3f}")
    return step, acc


def off_background(x: torch.Tensor, backgrounds: torch.Tensor) -> torch.Tensor:
    """(n, 1, h, w) bool: the pixels of `x` (n, 3, h, w) that differ from their scene's background
    color (n, 3): the objects, as both the VAE's and the diffusion loss weigh them."""
    return (x - backgrounds[:, :, None, None]).abs().sum(1, keepdim=True) > 0.05


def train_vae(vae, imgs: torch.Tensor, backgrounds: torch.Tensor, minutes: float, batch: int, seed: int,
              crop: int = SIZE // 2, object_weight: float = 10.0, steps=None, lr: float = 2e-3):
    """The VAE has no attention, so it is trained on random crops (aligned to its latent cells):
    a 32x32 crop costs a quarter of a whole image, for the same local reconstruction task.
    Pixels that differ from the scene's background weigh `object_weight` times more: objects are a
    few percent of the pixels, and an unweighted loss let the VAE blur small shapes and shift their
    colors (through the third run's VAE, the judge read back only 54 % of the colors and 71 % of
    the shapes of ground-truth scenes)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, foreach=True)
    budget, step = Budget(minutes, steps), 0
    vae.train()
    while budget.left(step):
        idx = torch.randint(0, len(imgs), (batch,), generator=g)
        cy, cx = (torch.randint(0, (SIZE - crop) // 4 + 1, (2,), generator=g) * 4).tolist()
        x = imgs[idx, :, cy : cy + crop, cx : cx + crop]
        w = 1.0 + (object_weight - 1.0) * off_background(x, backgrounds[idx])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        y = vae.decode(z).sample
        err = y - x
        rec = (w * (err.abs() + err**2)).mean() / w.mean()
        kl = post.kl().mean() / x[0].numel()
        loss = rec + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        frac = budget.fraction(step)
        for gr in opt.param_groups:  # cosine decay over the budget
            gr["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
        if step % 50 == 0:
            log(f"vae step {step} rec {rec.item():.4f} kl {kl.item():.3f}")
    vae.eval()
    return step


def background_colors(data) -> torch.Tensor:
    """Each scene's background color in the VAE's [-1, 1] range, (n, 3)."""
    return torch.tensor([scenes.COLORS[s.background] for s in data], dtype=torch.float32).div(127.5).sub(1.0)


@torch.no_grad()
def vae_ceiling(vae, group) -> dict:
    """What the judge reads back from ground-truth renders passed through the VAE (encode, decode):
    the most that any UNet on these latents can reach."""
    x = to_tensor(np.stack([scenes.render(s, SIZE) for s in group]))
    y = vae.decode(vae.encode(x).latent_dist.mean).sample
    imgs = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    rows = [judge.score(s, judge.read_scene(im)) for s, im in zip(group, imgs)]
    return {a: float(np.mean([r[a] for r in rows])) for a in (*judge.ATTRIBUTES, "all")}


@torch.no_grad()
def encode_all(vae, imgs: torch.Tensor, batch: int = 32):
    """The latent distribution of every image. In batches of 256 each 64x64x32 activation is
    134 MB, and encoding took 1.5-1.8x as long per image as in batches of 32 (17 MB), interleaved
    on 2 cores (2026-12-07). The latents are bit-identical: no image's result depends on its batch."""
    means, stds = [], []
    for i in range(0, len(imgs), batch):
        d = vae.encode(imgs[i : i + batch]).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def object_masks(imgs: torch.Tensor, backgrounds: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """For each scene, the latent cells (16x16) that hold part of an object or touch one: pixels
    that differ from the background, max-pooled to the VAE's 4x4 cells and dilated by one cell so
    that the background around an object, which draws its outline, counts too. (n, 1, 16, 16) bool."""
    out = []
    for i in range(0, len(imgs), batch):
        m = off_background(imgs[i : i + batch], backgrounds[i : i + batch]).float()
        m = F.max_pool2d(F.max_pool2d(m, 4), 3, stride=1, padding=1)
        out.append(m.bool())
    return torch.cat(out)


def train_diffusion(text, unet, probe, latents, latent_std, masks, captions, tokens: Tokens, labels: Labels, minutes,
                    batch, seed, dropout=0.1, probe_weight=0.1, object_weight=1.0, steps=None, ema_decays=(0.999,),
                    object_share=None, lr=1e-3, timesteps="uniform", min_weight=0.0):
    """The text encoder and UNet jointly. The probe's loss stays on (weighted) so that the encoder
    keeps stating the labels while it learns what the UNet needs. Every 100 steps it prints the
    caption gain: the loss on a fixed batch with shuffled captions minus with the true ones
    (about 0 means the model ignores its captions).
    Latent cells on and around objects (`masks`) weigh `object_weight` times more in each image's
    loss, as the VAE's pixels do: a small object covers under a tenth of the cells, so an
    unweighted loss is mostly the flat background, which the model learns early, while the shapes
    of small objects are what it draws worst. With weight 1 the loss is exactly the unweighted one.
    `object_share` instead gives the object cells that share of each image's loss whatever their
    area: at weight 5, a small object (14 % of the cells with its border) carries 44 % of its
    image's loss, a large one or two small ones (27-29 % of the cells) two thirds.
    `timesteps` "uniform" draws each image's noise level uniformly and weighs its loss by min-SNR-5;
    "importance" draws it in proportion to that weight and weighs every image alike: the same
    expected loss and gradient, with the batch spent where the weight is. Under uniform draws
    the 30 % of images above t = 700 carry 3 % of the weight, and the batch's effective size is
    56 % of its 64 images; drawn by weight, 77 % of the images fall in t = 100-500. Measured, it
    trains far worse: the noisiest levels, seen rarely, lose the layout (infra/train/README.md,
    the sixteenth run).
    `min_weight` raises every noise level's weight to at least that: min-SNR-5 gives the highest
    noise levels, where only the caption says what the picture is, almost none (0.08 at t = 700,
    0.005 at t = 999, against 0.83 at its peak). Measured at 0.25: every layout right, the small
    shapes lost (the seventeenth run); at 0.1 (the default) two-object prompts came out right more
    often than at 0 (the twentieth run against the nineteenth).
    The models end with the exponential moving average of their weights at `ema_decays[0]`; each
    further decay's average (0: the weights as trained) is returned as (unet, text) state dicts,
    keyed by decay. The averages do not touch training, so each is what a run with that decay
    alone would give."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER.items() if k != "timestep_spacing"})
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    weight = (torch.clamp(snr, max=5.0) / (snr + 1)).clamp(min=min_weight)  # min-SNR-5 for v-prediction
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    vz = latents[:128]
    vn = torch.randn(vz.shape, generator=g)
    vt = torch.linspace(300, 999, len(vz)).long()
    vzt, vv = sched.add_noise(vz, vn, vt), sched.get_velocity(vz, vn, vt)
    vcaps = [scenes.full_caption(c) for c in captions[: len(vz)]]

    @torch.no_grad()
    def caption_gain():
        unet.eval()
        text.eval()
        true, shuffled = (F.mse_loss(unet(vzt, vt, text(input_ids=tokens(c)).last_hidden_state).sample, vv).item()
                          for c in (vcaps, vcaps[1:] + vcaps[:1]))
        unet.train()
        text.train()
        return shuffled - true

    params = list(text.parameters()) + list(unet.parameters()) + list(probe.parameters())
    # foreach: one kernel per operation over all tensors instead of a Python loop per tensor (the
    # same arithmetic; on CPU PyTorch defaults to the loop).
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, foreach=True)
    live = [v for m in (unet, text) for v in m.state_dict().values() if v.dtype.is_floating_point]
    emas, shadows = {}, {}
    for d in ema_decays:
        if d > 0:
            emas[d] = tuple({k: v.detach().clone() for k, v in m.state_dict().items()} for m in (unet, text))
            shadows[d] = [e[k] for m, e in zip((unet, text), emas[d]) for k, v in m.state_dict().items()
                          if v.dtype.is_floating_point]
    budget, step, avg = Budget(minutes, steps), 0, None
    text.train()
    unet.train()
    while budget.left(step):
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        z0 = latents[idx] + latent_std[idx] * torch.randn(latents[idx].shape, generator=g)
        caps = [scenes.caption(captions[i], rng) if rng.random() >= dropout else "" for i in idx.tolist()]
        ids = tokens(caps)
        if timesteps == "importance":
            t = torch.multinomial(weight, batch, replacement=True, generator=g)
        else:
            t = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        zt = sched.add_noise(z0, noise, t)
        hidden = text(input_ids=ids).last_hidden_state
        pred = unet(zt, t, hidden).sample
        m = masks[idx].float()
        if object_share is None:
            w = 1.0 + (object_weight - 1.0) * m
        else:
            area = m.mean(dim=(1, 2, 3), keepdim=True).clamp(1 / m[0].numel(), 1 - 1 / m[0].numel())
            w = 1.0 + (object_share * (1 - area) / ((1 - object_share) * area) - 1.0) * m
        err = (w * (pred - sched.get_velocity(z0, noise, t)) ** 2).mean(dim=(1, 2, 3)) / w.mean(dim=(1, 2, 3))
        # Drawn by weight, each image weighs the mean weight: the loss keeps the uniform draw's scale
        # (and so its balance with the probe's loss and the gradient clipping).
        loss = err.mul(weight[t]).mean() if timesteps == "uniform" else err.mean() * weight.mean()
        loss = loss + probe_weight * probe(hidden, labels(caps))[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        frac = budget.fraction(step)
        warm = min(1.0, step / 50)
        for gr in opt.param_groups:
            gr["lr"] = lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
        with torch.no_grad():
            for d, shadow in shadows.items():
                decay = min(d, (1 + step) / (10 + step))
                torch._foreach_mul_(shadow, decay)
                torch._foreach_add_(shadow, live, alpha=1 - decay)
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 50 == 0:
            gain = f" caption gain {caption_gain():.4f}" if step % 100 == 0 else ""
            log(f"diffusion step {step} loss {avg:.4f} lr {opt.param_groups[0]['lr']:.2e}{gain}")
    if 0 in ema_decays:
        emas[0] = tuple({k: v.detach().clone() for k, v in m.state_dict().items()} for m in (unet, text))
    unet.load_state_dict(emas[ema_decays[0]][0])
    text.load_state_dict(emas[ema_decays[0]][1])
    text.eval()
    unet.eval()
    return step, {d: emas[d] for d in ema_decays[1:]}


# --- sampling (for the report; easel's Rust pipeline is the real user) ---------------------------

@torch.no_grad()
def sample(text, unet, vae, tokens: Tokens, prompts, scaling, steps=25, guidance=5.0, seed=0, negative=""):
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(**SCHEDULER, clip_sample=False, set_alpha_to_one=False)
    sch.set_timesteps(steps)
    n = len(prompts)
    cond = text(input_ids=tokens(list(prompts))).last_hidden_state
    unc = text(input_ids=tokens([negative] * n)).last_hidden_state
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, 4, SIZE // 4, SIZE // 4), generator=g)
    for t in sch.timesteps:
        e = unet(torch.cat([z, z]), t, torch.cat([unc, cond])).sample
        eu, ec = e.chunk(2)
        z = sch.step(eu + guidance * (ec - eu), t, z).prev_sample
    x = vae.decode(z / scaling).sample
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def generator(text, unet, vae, tokens, scaling):
    """prompts -> images, 64 at a time, the i-th batch seeded with i."""
    return lambda prompts: np.concatenate([
        sample(text, unet, vae, tokens, prompts[i : i + 64], scaling, seed=i) for i in range(0, len(prompts), 64)])


def held_out_scenes(held_out: set, seed: int):
    """Evaluation prompts: every held-out (shape, color, background) at a seeded size and position,
    and two-object scenes (random, so mostly unseen combinations)."""
    rng = np.random.default_rng(seed)
    ones = []
    for shape, color, bg in sorted(held_out):
        pos = list(scenes.POSITIONS)[rng.integers(9)]
        ones.append(scenes.Scene(bg, (scenes.Obj(shape, color, scenes.SIZES[rng.integers(2)], pos),)))
    twos = [scenes.random_scene(rng, set(), two_objects=1.0) for _ in range(60)]
    return ones, twos


def other_scene(n: int, seed: int = 0) -> list[int]:
    """For each of n scenes, the index of another one (a seeded random derangement): whose caption
    it is judged against for the chance level. Not the neighbour: the held-out scenes are sorted by
    shape, so a neighbour mostly shares it and made "chance" look like 31-57 % on shape."""
    order = np.random.default_rng(seed).permutation(n)
    partner = [0] * n
    for k in range(n):
        partner[order[k]] = int(order[(k + 1) % n])
    return partner


def evaluate(gen, ones, twos) -> dict:
    """gen(list of prompts) -> images. Returns rates per attribute, plus the judge's own checks."""
    out = {}
    for name, group in (("one object", ones), ("two objects", twos)):
        imgs = gen([scenes.full_caption(s) for s in group])
        truth = [scenes.render(s, SIZE) for s in group]
        rows = {"model": [judge.score(s, judge.read_scene(im)) for s, im in zip(group, imgs)],
                "ground truth": [judge.score(s, judge.read_scene(im)) for s, im in zip(group, truth)],
                "shuffled captions": [judge.score(group[j], judge.read_scene(im))
                                      for j, im in zip(other_scene(len(group)), imgs)]}
        out[name] = {k: {a: float(np.mean([r[a] for r in v])) for a in (*judge.ATTRIBUTES, "all")}
                     for k, v in rows.items()}
        out[name]["n"] = len(group)
    return out


# --- export --------------------------------------------------------------------------------------

def shrink_token_table(path: Path, keep: list[int]):
    """Replace the text encoder's 49408-row token embedding with the rows the captions use, behind
    an index map: ids -> map[ids] -> table. Other tokens read one shared row (the mean of the kept
    ones), so any prompt still runs. onnx has no pass for this, hence by hand."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    gather = next(n for n in m.graph.node if n.op_type == "Gather" and n.input[0] in inits
                  and numpy_helper.to_array(inits[n.input[0]]).shape[0] == TEXT["vocab_size"])
    table = numpy_helper.to_array(inits[gather.input[0]])
    keep = sorted(set(keep))
    small = np.concatenate([table[keep], table[keep].mean(0, keepdims=True)]).astype(np.float32)
    remap = np.full(TEXT["vocab_size"], len(keep), dtype=np.int32)
    remap[keep] = np.arange(len(keep), dtype=np.int32)
    m.graph.initializer.remove(inits[gather.input[0]])
    m.graph.initializer.extend([numpy_helper.from_array(small, "token_table"),
                                numpy_helper.from_array(remap, "token_remap")])
    ids = gather.input[1]
    idx = helper.make_node("Gather", ["token_remap", ids], ["token_ids_compact"], name="token_remap_gather", axis=0)
    gather.input[0] = "token_table"
    gather.input[1] = "token_ids_compact"
    pos = list(m.graph.node).index(gather)
    m.graph.node.insert(pos, idx)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    log(f"token table: {table.shape[0]} -> {small.shape[0]} rows ({path.stat().st_size / 1e6:.2f} MB)")


def store_weights_fp16(path: Path, min_elements: int = 1024):
    """Store the large float weights as float16 with a Cast back to float32 in front of their users:
    the file halves, and onnxruntime folds the casts when it loads the session, so the graph still
    computes in float32 (easel's pipeline feeds and reads float32)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(path))
    casts, kept = [], []
    for init in m.graph.initializer:
        if init.data_type == TensorProto.FLOAT and np.prod(init.dims) >= min_elements:
            w = numpy_helper.to_array(init)
            kept.append(numpy_helper.from_array(w.astype(np.float16), init.name + "_fp16"))
            casts.append(helper.make_node("Cast", [init.name + "_fp16"], [init.name], to=TensorProto.FLOAT,
                                          name=init.name + "_cast"))
        else:
            kept.append(init)
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    nodes = casts + list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    log(f"fp16 weights: {path.parent.name}/{path.name} {path.stat().st_size / 1e6:.2f} MB")


def export_folder(out: Path, tok, text, unet, vae, scaling: float, keep_tokens, meta: dict):
    import diffusers

    out.mkdir(parents=True, exist_ok=True)
    vae.register_to_config(scaling_factor=scaling)
    batch, size = {0: "batch_size"}, {0: "batch_size", 2: "height", 3: "width"}
    latent = {0: "batch_size", 2: "height_latent", 3: "width_latent"}
    ids = torch.full((1, 77), 49407, dtype=torch.int64)
    ids[0, :4] = torch.tensor([49406, 320, 1125, 49407])
    components = (
        ("text_encoder", tiny.TextEncoderWrapper(text), (ids,), ["input_ids"], ["last_hidden_state", "pooler_output"],
         {"input_ids": {0: "batch_size", 1: "sequence_length"},
          "last_hidden_state": {0: "batch_size", 1: "sequence_length"}, "pooler_output": batch}, text.config),
        ("unet", tiny.UNetWrapper(unet), (torch.randn(2, 4, 16, 24), torch.tensor(999.0), torch.randn(2, 77, 64)),
         ["sample", "timestep", "encoder_hidden_states"], ["out_sample"],
         {"sample": size, "encoder_hidden_states": {0: "batch_size", 1: "sequence_length"}, "out_sample": size},
         unet),
        ("vae_encoder", tiny.VaeEncoderWrapper(vae), (torch.randn(1, 3, 64, 96),), ["sample"], ["latent_parameters"],
         {"sample": size, "latent_parameters": latent}, vae),
        ("vae_decoder", tiny.VaeDecoderWrapper(vae), (torch.randn(1, 4, 16, 24),), ["latent_sample"], ["sample"],
         {"latent_sample": latent, "sample": size}, vae),
    )
    text.config.architectures = ["CLIPTextModel"]
    for name, wrapper, example, inputs, outputs, axes, config in components:
        d = out / name
        tiny.export(wrapper, example, d / "model.onnx", inputs, outputs, axes)
        if name == "text_encoder":
            shrink_token_table(d / "model.onnx", keep_tokens)
        store_weights_fp16(d / "model.onnx")
        (config.save_pretrained if name == "text_encoder" else config.save_config)(str(d))
    sch = diffusers.EulerDiscreteScheduler(**SCHEDULER)
    sch.save_pretrained(str(out / "scheduler"))
    tiny.write_model_index(out, sch, tok)
    (out / "easel.json").write_text(json.dumps(meta, indent=2) + "\n")


# Each phase's default budget in steps. The committed model (the twenty-first run) was trained with
# exactly these defaults: the plain command rebuilt it byte for byte on a 2-core AVX-512 machine
# (infra/train/README.md, "Checked from scratch"). The VAE and text counts come
# from the fifth run, whose phases ran 20 and 3 minutes on its 2-core machine. The UNet's 2300 steps
# took the whole run to 43-55 minutes on 2-core AVX-512 machines (0.71-0.88 s a step) and project to 81-86
# on the slower 2-core machines measured before (about 1.2-1.4 s a step), under the 90 of the budget.
DEFAULT_STEPS = {"vae": 4028, "text": 343, "diffusion": 2300}


def budget_label(args, phase: str) -> str:
    """The budget a phase ran under, as the report records it ("4028 steps", "20 minutes")."""
    steps = getattr(args, f"{phase}_steps")
    return f"{steps} steps" if steps is not None else f"{getattr(args, f'{phase}_minutes'):g} minutes"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bpe", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "models" / "easel-shapes")
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("--images", type=int, default=40000)
    ap.add_argument("--two-objects", type=float, default=0.4, help="share of two-object training scenes")
    for phase, what in (("vae", "the VAE"), ("text", "the text encoder alone, before the UNet (see pretrain_text)"),
                        ("diffusion", "the text encoder and UNet")):
        ap.add_argument(f"--{phase}-steps", type=int, metavar="N",
                        help=f"train {what} for N steps (default {DEFAULT_STEPS[phase]}): the same weights on "
                             "any machine with the same instruction set")
        ap.add_argument(f"--{phase}-minutes", type=float, metavar="M",
                        help=f"train {what} for M minutes instead of a number of steps: the step count then "
                             "depends on the machine's speed")
    ap.add_argument("--object-weight", type=float, default=5.0,
                    help="weight of the latent cells on and around objects in the diffusion loss (default 5, "
                         "as the committed model was trained; 1 is the unweighted loss of the earlier runs)")
    ap.add_argument("--object-share", type=float, metavar="S",
                    help="instead of --object-weight, give the latent cells on and around objects the share S "
                         "(0-1) of each image's diffusion loss, whatever their area")
    ap.add_argument("--ema-decay", type=float, nargs="+", default=[0.999], metavar="D",
                    help="decay of the exponential moving average of the text encoder's and UNet's weights that "
                         "the run ends with (default 0.999). Each further D is averaged alongside, without "
                         "changing the training, and saved as the checkpoint <out>-ema<D>.pt (0: the weights as "
                         "trained): one run for choosing the decay")
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-lr", type=float, default=2e-3, help="the VAE's peak learning rate (cosine decay to 5 %%)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--unet-channels", type=int, nargs=3, default=UNET["block_out_channels"], metavar="C",
                    help="the UNet's channels at 16x16, 8x8 and 4x4 (default %(default)s), each a multiple "
                         "of its 32 normalization groups")
    ap.add_argument("--lr", type=float, default=1e-3,
                    help="the text encoder's and UNet's peak learning rate (50-step warm-up, cosine decay to 5 %%)")
    ap.add_argument("--timesteps", choices=("uniform", "importance"), default="uniform",
                    help="how the UNet's training noise levels are drawn: uniformly, each loss weighted by "
                         "min-SNR-5 (default), or in proportion to that weight, each loss alike (the same "
                         "expected gradient; measured far worse, see train_diffusion)")
    ap.add_argument("--min-weight", type=float, default=0.1, metavar="W",
                    help="the least weight of any noise level's loss (default 0.1; 0 is min-SNR-5 alone, which "
                         "gives the noisiest levels almost none; 0.25 measured worse, see train_diffusion)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--checkpoint", type=Path, metavar="CHECKPOINT",
                    help="skip training: evaluate and export a checkpoint that an earlier run saved")
    ap.add_argument("--resume", type=Path, metavar="CHECKPOINT",
                    help="continue an earlier run: keep its VAE, train its text encoder and UNet for "
                         "--diffusion-steps (or --diffusion-minutes) more, with a fresh cosine schedule, then "
                         "evaluate and export")
    ap.add_argument("--vae-from", type=Path, metavar="CHECKPOINT",
                    help="take the VAE from an earlier run's checkpoint instead of training it, then train the "
                         "text encoder and UNet from scratch as a whole run does. The VAE phase is deterministic "
                         "and touches no other random state, so with the checkpoint's seed and VAE settings this "
                         "gives the weights a whole run gives, without its 30 minutes (for trying changes to the "
                         "text encoder and UNet)")
    ap.add_argument("--no-eval", action="store_true", help="skip the adherence evaluation")
    args = ap.parse_args()
    if args.vae_from and (args.checkpoint or args.resume):
        ap.error("--vae-from trains a new text encoder and UNet: it does not go with --checkpoint or --resume")
    if args.object_share is not None and not 0 < args.object_share < 1:
        ap.error("--object-share is a share of the loss: between 0 and 1, exclusive")
    if not 0 <= args.min_weight <= 1:
        ap.error("--min-weight is a loss weight: between 0 and 1")
    if not args.lr > 0:
        ap.error("--lr is a learning rate: above 0")
    if any(c <= 0 or c % UNET["norm_num_groups"] for c in args.unet_channels):
        ap.error(f"--unet-channels: each a positive multiple of {UNET['norm_num_groups']}")
    if any(not 0 <= d < 1 for d in args.ema_decay):
        ap.error("--ema-decay: each decay is at least 0 (the weights as trained) and below 1")
    for phase in DEFAULT_STEPS:
        steps, minutes = getattr(args, f"{phase}_steps"), getattr(args, f"{phase}_minutes")
        if steps is not None and minutes is not None:
            ap.error(f"--{phase}-steps and --{phase}-minutes both given: choose one")
        if steps is None and minutes is None:
            setattr(args, f"{phase}_steps", DEFAULT_STEPS[phase])
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(**TEXT)
    cfg._attn_implementation = "eager"
    ck = torch.load(args.checkpoint or args.resume) if args.checkpoint or args.resume else None
    if ck is not None:
        # A checkpoint is rebuilt with the channels it was trained with; the ones written before
        # `--unet-channels` existed all have (32, 64, 128).
        args.unet_channels = ck.get("training", {}).get("unet_channels", [32, 64, 128])
    unet_config = dict(UNET, block_out_channels=list(args.unet_channels))
    vae, text, unet = AutoencoderKL(**VAE), CLIPTextModel(cfg), UNet2DConditionModel(**unet_config)
    vae.set_attn_processor(AttnProcessor())
    unet.set_attn_processor(AttnProcessor())
    held_out = scenes.held_out_triples()
    t0 = time.time()
    work = REPO / ".easel" / "train"
    work.mkdir(parents=True, exist_ok=True)
    probe, labels = CaptionProbe(TEXT["hidden_size"]), Labels()
    previous = None
    if ck is not None:
        for m, k in ((vae, "vae"), (text, "text"), (unet, "unet")):
            m.load_state_dict(ck[k])
            m.eval()
        if "probe" in ck:
            probe.load_state_dict(ck["probe"])
        scaling, training = ck["scaling"], ck.get("training", {})
        previous = training
        if args.resume:
            # Continue on the dataset the checkpoint was trained on, whatever the command line says.
            for key in ("seed", "images", "two_objects"):
                if key in previous and previous[key] != getattr(args, key):
                    log(f"--resume: {key} {previous[key]} from the checkpoint (not {getattr(args, key)})")
                    setattr(args, key, previous[key])
    tok = tiny.build_tokenizer(args.bpe, args.out / "tokenizer")
    tokens = Tokens(tok)
    data, imgs = make_dataset(args.images, args.seed, held_out, args.two_objects)
    log(f"dataset: {len(data)} scenes, {len(held_out)} held-out triples, {time.time() - t0:.0f} s")
    if not args.checkpoint:
        x = to_tensor(imgs)
        if args.resume:
            means, stds = encode_all(vae, x)
            log(f"resuming {args.resume}: {previous.get('diffusion_steps')} diffusion steps so far")
            if "probe" not in ck:
                probe_steps, acc = pretrain_text(text, probe, data, tokens, labels, None, 256, args.seed + 6,
                                                 probe_only=True, steps=200)
                log(f"probe fitted to the encoder: {probe_steps} steps, label accuracy {acc:.3f}")
        else:
            log("vae parameters:", sum(p.numel() for p in vae.parameters()))
            t1 = time.time()
            if args.vae_from:
                source = torch.load(args.vae_from)
                vae.load_state_dict(source["vae"])
                vae.eval()
                vae_from = {k: source["training"].get(k) for k in
                            ("seed", "images", "two_objects", "vae_steps", "vae_batch", "vae_lr", "vae_seconds")}
                vae_from["checkpoint"] = args.vae_from.name
                vae_steps = vae_from["vae_steps"]
                if (vae_from["seed"], vae_from["images"], vae_from["two_objects"]) != (
                        args.seed, args.images, args.two_objects):
                    ap.error(f"--vae-from: {args.vae_from} was trained on another dataset ({vae_from})")
                log(f"vae from {args.vae_from}: {vae_from}")
            else:
                vae_steps = train_vae(vae, x, background_colors(data), args.vae_minutes, args.vae_batch, args.seed,
                                      steps=args.vae_steps, lr=args.vae_lr)
                vae_from = None
            vae_seconds = round(time.time() - t1)
            means, stds = encode_all(vae, x)
            scaling = float(1.0 / means.std())
            with torch.no_grad():
                rec = vae.decode(means[:256]).sample
                vae_psnr = float(10 * torch.log10(4.0 / F.mse_loss(rec, x[:256])))
            log(f"vae: {vae_steps} steps in {time.time() - t1:.0f} s, PSNR {vae_psnr:.1f} dB, scaling {scaling:.4f}")
            ceiling = {name: vae_ceiling(vae, group) for name, group in
                       zip(("one object", "two objects"), held_out_scenes(held_out, args.seed + 2))}
            log("the judge on held-out ground truth through the VAE:", json.dumps(ceiling))
            log("text parameters:", sum(p.numel() for p in text.parameters()),
                "unet parameters:", sum(p.numel() for p in unet.parameters()))
            t2 = time.time()
            text_steps, text_acc = pretrain_text(text, probe, data, tokens, labels, args.text_minutes, 256,
                                                 args.seed + 3, steps=args.text_steps)
            log(f"text encoder: {text_steps} steps in {time.time() - t2:.0f} s, label accuracy {text_acc:.3f}")
        t2 = time.time()
        # Each resumption draws other batches than the runs it continues.
        diffusion_seed = args.seed + 1 + (5 * (1 + len(previous.get("resumed", []))) if args.resume else 0)
        steps, other_emas = train_diffusion(text, unet, probe, means * scaling, stds * scaling,
                                            object_masks(x, background_colors(data)), data, tokens, labels,
                                            args.diffusion_minutes, args.batch, diffusion_seed,
                                            object_weight=args.object_weight, steps=args.diffusion_steps,
                                            ema_decays=args.ema_decay, object_share=args.object_share, lr=args.lr,
                                            timesteps=args.timesteps, min_weight=args.min_weight)
        log(f"diffusion: {steps} steps in {time.time() - t2:.0f} s")
        if args.resume:
            training = {**previous, "diffusion_steps": previous["diffusion_steps"] + steps,
                        "train_seconds": previous["train_seconds"] + round(time.time() - t0),
                        "resumed": previous.get("resumed", []) + [
                            {"diffusion_steps": steps, "budget": budget_label(args, "diffusion"),
                             "object_weight": args.object_weight, "object_share": args.object_share,
                             "ema_decay": args.ema_decay[0], "lr": args.lr, "timesteps": args.timesteps,
                             "min_weight": args.min_weight, "earlier_diffusion_steps": previous["diffusion_steps"]}]}
        else:
            training = {"seed": args.seed, "images": args.images, "train_seconds": round(time.time() - t0),
                        "vae_steps": vae_steps, "vae_psnr_db": round(vae_psnr, 2), "vae_ceiling": ceiling,
                        "text_steps": text_steps,
                        "text_label_accuracy": round(text_acc, 4), "diffusion_steps": steps,
                        "vae_batch": args.vae_batch, "vae_lr": args.vae_lr, "batch": args.batch, "lr": args.lr, "timesteps": args.timesteps,
                        "min_weight": args.min_weight, "two_objects": args.two_objects,
                        "vae_seconds": vae_seconds, "vae_from": vae_from, "unet_heads": UNET["attention_head_dim"],
                        "unet_channels": list(args.unet_channels),
                        "object_weight": args.object_weight, "object_share": args.object_share,
                        "ema_decay": args.ema_decay[0], "threads": args.threads, "scaling_factor": scaling,
                        "budgets": {phase: budget_label(args, phase) for phase in ("vae", "text", "diffusion")}}
        torch.save({"text": text.state_dict(), "unet": unet.state_dict(), "vae": vae.state_dict(),
                    "probe": probe.state_dict(), "scaling": scaling, "training": training},
                   work / f"{args.out.name}.pt")
        for d, (unet_state, text_state) in other_emas.items():
            path = work / f"{args.out.name}-ema{d:g}.pt"
            torch.save({"text": text_state, "unet": unet_state, "vae": vae.state_dict(), "probe": probe.state_dict(),
                        "scaling": scaling, "training": {**training, "ema_decay": d}}, path)
            log(f"the weights with EMA decay {d:g}: {path} (export and evaluate with --checkpoint)")

    report = None
    if not args.no_eval:
        report = evaluate(generator(text, unet, vae, tokens, scaling), *held_out_scenes(held_out, args.seed + 2))
        log(json.dumps(report, indent=1))

    # Tokens the caption grammar can produce: every word of every phrasing, plus BOS/EOS.
    rng = np.random.default_rng(0)
    vocab = {49406, 49407}
    for s in data[:5000]:
        for _ in range(4):
            vocab.update(tokens([scenes.caption(s, rng)])[0].tolist())
    meta = {"name": "easel-shapes",
            "description": "easel's own small Stable-Diffusion-architecture model, trained from scratch on procedural "
                           "scenes: one or two shapes (circle, square, triangle, star, cross) in eight colors, small or "
                           "large, on a 3x3 grid, on a plain background. It draws nothing else.",
            "default_steps": 25, "default_guidance": 5.0, "native_width": SIZE, "native_height": SIZE,
            "max_generation_side": SIZE}
    export_folder(args.out, tok, text, unet, vae, scaling, sorted(vocab), meta)
    summary = {**training, "versions": tiny.versions(), "adherence": report,
               "bytes": sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())}
    (args.out / "training-report.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"done: folder {summary['bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
