#!/usr/bin/env python3
"""Build the tiny random-weight SD-1.x test model for easel and export it to ONNX.

Writes models/tiny-sd/ in the diffusers/optimum ONNX folder layout (model_index.json,
scheduler/, tokenizer/, text_encoder/, unet/, vae_encoder/, vae_decoder/) plus easel.json,
easel-export.json and the tokenizer fixture crates/diffusion/tests/fixtures/clip_tokens.json.

The weights are random (fixed seeds): the model does not follow prompts. It exists so that
tests and first-time users can run the whole pipeline on 2 CPU cores in seconds.

Usage (normally through infra/models/make-tiny-model.sh):
    python infra/models/make_tiny_model.py --bpe path/to/bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

# Deterministic, single-threaded-ish CPU build: set before importing torch.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OPSET = 17
SEED = 20261122

# ---------------------------------------------------------------------------------------------
# Architecture (tuned for: UNet batch 2 @ 128x128 latents << 0.3 s, VAE decode 1024^2 <= ~1-2 s
# on 2 CPU cores with onnxruntime; whole folder < 10 MB).
# ---------------------------------------------------------------------------------------------
TEXT = dict(
    vocab_size=49408,
    hidden_size=16,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=16,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
UNET = dict(
    sample_size=128,  # 1024 px native
    in_channels=4,
    out_channels=4,
    # Four levels (three downsamples) like SD 1.x, so latents must be multiples of 8 (images of
    # 64 px) exactly as for the real models; cross-attention only at the lowest level (1/64).
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    block_out_channels=(16, 32, 32, 32),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=TEXT["hidden_size"],
    attention_head_dim=4,  # diffusers' SD-1.x naming: this is the number of heads
)
VAE = dict(
    sample_size=1024,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    scaling_factor=0.18215,
    mid_block_add_attention=False,
)
SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
)
EASEL = dict(
    name="tiny-sd",
    description=(
        "Tiny Stable-Diffusion-1.x-architecture model with random weights, for tests and trying "
        "easel; it does not follow prompts and its images are abstract noise. Real CLIP tokenizer."
    ),
    default_steps=10,
    default_guidance=7.5,
    native_width=1024,
    native_height=1024,
)

# `--preset small`: a random-weight model shaped like SD 1.5 (cross-attention at three of four
# levels, two resnets per block, VAE mid-block attention) at about a fifth of its widths, large
# enough that ONNX Runtime dominates every generation. For benchmarks; never committed
# (about 0.5 GB). Native size 256x256.
SMALL = dict(
    text=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, projection_dim=256),
    unet=dict(
        sample_size=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        norm_num_groups=32,
        cross_attention_dim=256,
        attention_head_dim=8,
    ),
    vae=dict(sample_size=256, block_out_channels=(64, 128, 256, 256), layers_per_block=2, norm_num_groups=32,
             mid_block_add_attention=True),
    easel=dict(name="small-sd", description="Random-weight SD-1.5-shaped model for benchmarks (not committed).",
               default_steps=10, native_width=256, native_height=256),
)


# How the folder is exported. "optimum": int64 input_ids, a rank-0 float timestep, the VAE encoder's
# `latent_parameters` (mean || logvar) -- what `optimum-cli export onnx` writes. "script": what
# diffusers' scripts/convert_stable_diffusion_checkpoint_to_onnx.py writes: int32 input_ids, a
# float timestep of shape [batch], and a VAE encoder whose output `latent_sample` is already a
# sample of the posterior (a RandomNormalLike node inside the graph).
EXPORT = dict(convention="optimum", scheduler_class="EulerDiscreteScheduler", pad_token="<|endoftext|>")

# `--preset script`: the SD-1.x tiny model, smaller, exported the script's way. A test fixture
# (crates/diffusion/tests/fixtures/models/tiny-sd-script).
SCRIPT = dict(
    text=dict(hidden_size=8, intermediate_size=32, projection_dim=8),
    unet=dict(sample_size=64, cross_attention_dim=8, block_out_channels=(8, 16, 16, 16)),
    easel=dict(name="tiny-sd-script", description="Tiny random-weight SD-1.x model in the layout of diffusers' "
               "conversion script (int32 input_ids, float [batch] timestep); a test fixture.",
               native_width=512, native_height=512),
    export=dict(convention="script"),
)

# `--preset sd2-v`: an SD-2.x-shaped tiny model: v-prediction with SD 2.1's DDIM scheduler config,
# an OpenCLIP-style text encoder (gelu) whose tokenizer pads with "!" (id 0), linear projections
# and upcast attention in the UNet, per-block head counts. A test fixture
# (crates/diffusion/tests/fixtures/models/tiny-sd2-v).
SD2_V = dict(
    text=dict(hidden_size=8, intermediate_size=32, projection_dim=8, hidden_act="gelu", pad_token_id=0),
    # The tiny model's UNet widths: at (8, 16, 16, 16) this random UNet made DDIM at 6 steps
    # ill-conditioned (a 1e-6 change of the initial latents moved diffusers' own output by 7e-4),
    # which no parity check can work with.
    unet=dict(sample_size=64, cross_attention_dim=8, use_linear_projection=True, upcast_attention=True,
              attention_head_dim=(2, 4, 4, 4)),
    scheduler=dict(prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False),
    easel=dict(name="tiny-sd2-v", description="Tiny random-weight SD-2.x-shaped model (v-prediction, OpenCLIP-style "
               "tokenizer padding); a test fixture.", native_width=512, native_height=512),
    export=dict(scheduler_class="DDIMScheduler", pad_token="!"),
)


def apply_preset(name):
    preset = {"small": SMALL, "script": SCRIPT, "sd2-v": SD2_V}.get(name)
    if preset is None:
        return
    TEXT.update(preset.get("text", {}))
    UNET.update(preset.get("unet", {}))
    VAE.update(preset.get("vae", {}))
    SCHEDULER.update(preset.get("scheduler", {}))
    EASEL.update(preset.get("easel", {}))
    EXPORT.update(preset.get("export", {}))


FIXTURE_PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "A Majestic LION, Oil Painting, TRENDING on ArtStation",
    "A CAT's   café — naïve résumé! 100% :) isn't it?",
    "<b>bold</b> &amp; <i>italic</i> &lt;tags&gt; \"quoted\"",
    "東京の夜景、ネオン 🌃🐱✨ cyberpunk city",
    "1024x768, 3.14159, 42 cats, 2026-11-22, $19.99, #1",
    "",
    ", ".join(
        "a very detailed intricate ornate baroque cathedral interior with stained glass number %d" % i
        for i in range(8)
    ),
    "  \n\tleading and trailing whitespace\twith\ttabs\nand newlines \n\n  ",
]
ASTRONAUT_IDS = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]


def log(*a):
    print(*a, flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict:
    pkgs = ["torch", "diffusers", "transformers", "tokenizers", "onnx", "onnxruntime", "onnxscript",
            "numpy", "huggingface_hub", "safetensors"]
    out = {}
    for p in pkgs:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    out["python"] = platform.python_version()
    return out


# ---------------------------------------------------------------------------------------------
# Tokenizer: real CLIP BPE vocabulary, built the way CLIP's SimpleTokenizer does it.
# ---------------------------------------------------------------------------------------------
def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tokenizer(bpe_gz: Path, out: Path):
    from transformers import CLIPTokenizer

    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408, len(vocab)
    encoder = {t: i for i, t in enumerate(vocab)}
    assert encoder["<|startoftext|>"] == 49406 and encoder["<|endoftext|>"] == 49407

    out.mkdir(parents=True, exist_ok=True)
    # vocab.json / merges.txt exactly as transformers 4.x CLIPTokenizer.save_vocabulary wrote them
    # (transformers 5 only writes tokenizer.json + tokenizer_config.json).
    (out / "vocab.json").write_text(
        json.dumps(encoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(out / "merges.txt", "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write(" ".join(m) + "\n")

    # Positional vocab/merges (the keyword form of CLIPTokenizerFast misbehaved in transformers 5).
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"),
                        pad_token=EXPORT["pad_token"], model_max_length=77)
    # transformers 5's save_pretrained writes tokenizer_config.json + tokenizer.json only. Keep its
    # tokenizer_config.json; leave tokenizer.json out (3.6 MB; SD repos ship vocab.json + merges.txt,
    # and easel must read those anyway).
    tmp = out.parent / ".tok-save"
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    shutil.copy(tmp / "tokenizer_config.json", out / "tokenizer_config.json")
    shutil.rmtree(tmp)
    (out / "special_tokens_map.json").write_text(
        json.dumps(tok.special_tokens_map, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return tok


def check_tokenizer(tok_dir: Path) -> list[dict]:
    """Loads the saved tokenizer two ways (tokenizer.json, and vocab.json+merges.txt only) and
    checks they agree; returns the fixture records."""
    from transformers import CLIPTokenizer

    assert not (tok_dir / "tokenizer.json").exists()
    t_json = CLIPTokenizer.from_pretrained(str(tok_dir))  # vocab.json + merges.txt + configs
    legacy_dir = tok_dir.parent / ".tok-legacy-check"
    shutil.rmtree(legacy_dir, ignore_errors=True)
    legacy_dir.mkdir()
    for f in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        shutil.copy(tok_dir / f, legacy_dir / f)
    t_legacy = CLIPTokenizer.from_pretrained(str(legacy_dir))
    t_pos = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"),
                          pad_token="<|endoftext|>", model_max_length=77)
    shutil.rmtree(legacy_dir)

    records = []
    for p in FIXTURE_PROMPTS:
        ids = [t(p, padding="max_length", max_length=77, truncation=True)["input_ids"]
               for t in (t_json, t_legacy, t_pos)]
        assert ids[0] == ids[1] == ids[2], (p, ids)
        assert len(ids[0]) == 77 and ids[0][0] == 49406, ids[0]
        records.append({"prompt": p, "input_ids": ids[0]})
    astro = records[0]["input_ids"]
    assert astro == ASTRONAUT_IDS + [49407] * (77 - len(ASTRONAUT_IDS)), astro
    log("tokenizer OK:", astro[:14], "...")
    long = next(r for r in records if len(r["prompt"]) > 300)
    assert long["input_ids"][-1] == 49407 and 49407 not in long["input_ids"][1:-1], "long prompt not truncated?"
    return records


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
class TextEncoderWrapper(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids):
        o = self.m(input_ids=input_ids, return_dict=True)
        return o.last_hidden_state, o.pooler_output


class UNetWrapper(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.m(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class VaeEncoderWrapper(torch.nn.Module):
    """optimum >= 1.23: latent_parameters = mean || logvar (after quant_conv)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, sample):
        return self.m.encode(sample, return_dict=True).latent_dist.parameters


class VaeEncoderSampleWrapper(VaeEncoderWrapper):
    """diffusers' conversion script: latent_sample = a sample of the posterior."""

    def forward(self, sample):
        return self.m.encode(sample, return_dict=True).latent_dist.sample()


class VaeDecoderWrapper(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, latent_sample):
        return self.m.decode(latent_sample, return_dict=False)[0]


def export(module, args, path: Path, input_names, output_names, dynamic_axes):
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module, args, str(path),
            input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
            opset_version=OPSET, do_constant_folding=True, dynamo=False, external_data=False,
        )
    import onnx

    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    for init in m.graph.initializer:
        assert init.data_location != onnx.TensorProto.EXTERNAL, "external data"
        assert init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64,
                                  onnx.TensorProto.INT32, onnx.TensorProto.BOOL), (init.name, init.data_type)
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    log(f"exported {shown} ({path.stat().st_size / 1e6:.2f} MB)")


def build_models(out: Path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    text_cfg = CLIPTextConfig(**TEXT)
    text_cfg._attn_implementation = "eager"
    text = CLIPTextModel(text_cfg).eval()
    torch.manual_seed(SEED + 1)
    unet = UNet2DConditionModel(**UNET).eval()
    torch.manual_seed(SEED + 2)
    vae = AutoencoderKL(**VAE).eval()

    # Weight fingerprints (independent of the ONNX serializer).
    def fp(m):
        h = hashlib.sha256()
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    fingerprints = {"text_encoder": fp(text), "unet": fp(unet), "vae": fp(vae)}
    params = {"text_encoder": sum(p.numel() for p in text.parameters()),
              "unet": sum(p.numel() for p in unet.parameters()),
              "vae": sum(p.numel() for p in vae.parameters())}
    log("parameters:", params)

    hid = TEXT["hidden_size"]
    # text encoder
    d = out / "text_encoder"
    script = EXPORT["convention"] == "script"
    ids = torch.full((1, 77), 49407, dtype=torch.int32 if script else torch.int64)
    ids[0, :4] = torch.tensor([49406, 320, 1125, 49407])
    export(TextEncoderWrapper(text), (ids,), d / "model.onnx", ["input_ids"],
           ["last_hidden_state", "pooler_output"],
           {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "last_hidden_state": {0: "batch_size", 1: "sequence_length"},
            "pooler_output": {0: "batch_size"}})
    text.config.architectures = ["CLIPTextModel"]
    text.config.save_pretrained(str(d))

    # unet
    d = out / "unet"
    timestep = torch.tensor([999.0, 999.0]) if script else torch.tensor(999.0)
    timestep_axes = {"timestep": {0: "batch"}} if script else {}
    export(UNetWrapper(unet),
           (torch.randn(2, 4, 16, 24), timestep, torch.randn(2, 77, hid)),
           d / "model.onnx", ["sample", "timestep", "encoder_hidden_states"], ["out_sample"],
           {"sample": {0: "batch_size", 2: "height", 3: "width"},
            "encoder_hidden_states": {0: "batch_size", 1: "sequence_length"},
            "out_sample": {0: "batch_size", 2: "height", 3: "width"}, **timestep_axes})
    unet.save_config(str(d))

    # vae encoder / decoder (both carry the AutoencoderKL config, like optimum)
    d = out / "vae_encoder"
    encoder, encoder_out = (VaeEncoderSampleWrapper, "latent_sample") if script else (VaeEncoderWrapper, "latent_parameters")
    export(encoder(vae), (torch.randn(1, 3, 128, 192),), d / "model.onnx",
           ["sample"], [encoder_out],
           {"sample": {0: "batch_size", 2: "height", 3: "width"},
            encoder_out: {0: "batch_size", 2: "height_latent", 3: "width_latent"}})
    vae.save_config(str(d))
    d = out / "vae_decoder"
    export(VaeDecoderWrapper(vae), (torch.randn(1, 4, 16, 24),), d / "model.onnx",
           ["latent_sample"], ["sample"],
           {"latent_sample": {0: "batch_size", 2: "height_latent", 3: "width_latent"},
            "sample": {0: "batch_size", 2: "height", 3: "width"}})
    vae.save_config(str(d))

    if EASEL["name"] != "tiny-sd":
        return fingerprints, params, {}  # the benchmark model is not verified against torch
    # Torch reference outputs, to compare with onnxruntime: other batch sizes, sequence lengths
    # and non-square sizes than the export used, to exercise the dynamic axes.
    torch.manual_seed(7)
    ref = {k: [] for k in ("text_encoder", "unet", "vae_encoder", "vae_decoder")}
    te_w, un_w, enc_w, dec_w = (TextEncoderWrapper(text), UNetWrapper(unet),
                                VaeEncoderWrapper(vae), VaeDecoderWrapper(vae))
    with torch.no_grad():
        for b, n in ((2, 77), (3, 20)):
            ids = torch.randint(1, 49406, (b, n))
            ids[:, 0] = 49406
            ids[:, n // 2:] = 49407
            ref["text_encoder"].append(((ids.numpy(),), [t.numpy() for t in te_w(ids)]))
        for b, h, w, t in ((2, 32, 40, 501.25), (1, 96, 168, 999.0), (4, 8, 8, 1.0)):
            s, t, e = torch.randn(b, 4, h, w), torch.tensor(t), torch.randn(b, 77, hid)
            ref["unet"].append(((s.numpy(), t.numpy(), e.numpy()), [un_w(s, t, e).numpy()]))
        for b, h, w in ((1, 64, 96), (2, 256, 128)):
            x = torch.randn(b, 3, h, w)
            ref["vae_encoder"].append(((x.numpy(),), [enc_w(x).numpy()]))
        for b, h, w in ((1, 12, 8), (2, 96, 168)):
            z = torch.randn(b, 4, h, w)
            ref["vae_decoder"].append(((z.numpy(),), [dec_w(z).numpy()]))
    return fingerprints, params, ref


def write_scheduler(out: Path):
    import diffusers

    sch = getattr(diffusers, EXPORT["scheduler_class"])(**SCHEDULER)
    sch.save_pretrained(str(out / "scheduler"))
    return sch


def write_model_index(out: Path, scheduler, tokenizer):
    """model_index.json as diffusers' OnnxStableDiffusionPipeline.save_config writes it."""
    from diffusers import OnnxRuntimeModel, OnnxStableDiffusionPipeline

    stub = OnnxRuntimeModel(None)  # no session needed: save_config only records class names
    pipe = OnnxStableDiffusionPipeline(
        vae_encoder=stub, vae_decoder=stub, text_encoder=stub, tokenizer=tokenizer, unet=stub,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_config(str(out))
    idx = json.loads((out / "model_index.json").read_text())
    log("model_index.json:", json.dumps(idx))


# ---------------------------------------------------------------------------------------------
# Verification with onnxruntime
# ---------------------------------------------------------------------------------------------
def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def io_summary(sess) -> dict:
    f = lambda a: {"name": a.name, "type": a.type, "shape": list(a.shape)}  # noqa: E731
    return {"inputs": [f(i) for i in sess.get_inputs()], "outputs": [f(o) for o in sess.get_outputs()]}


def timeit(fn, n: int) -> tuple[float, float]:
    fn()  # warm-up
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), float(min(ts))


def verify(out: Path, ref: dict, threads: int, n: int) -> dict:
    io, timings = {}, {}
    for comp in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        sess = ort_session(out / comp / "model.onnx", threads)
        io[comp] = io_summary(sess)
        log(f"{comp}:")
        for k in ("inputs", "outputs"):
            for a in io[comp][k]:
                log(f"   {k[:-1]:6} {a['name']:22} {a['type']:15} {a['shape']}")
        names = [i.name for i in sess.get_inputs()]
        for inputs, expected in ref[comp]:
            got = sess.run(None, dict(zip(names, inputs)))
            for g, e in zip(got, expected):
                assert g.shape == e.shape, (comp, g.shape, e.shape)
                err = float(np.max(np.abs(g - e)) / (np.max(np.abs(e)) + 1e-6))
                assert np.isfinite(g).all() and err < 1e-4, (comp, err)
            log(f"   onnxruntime vs torch, inputs {[list(i.shape) for i in inputs]}: "
                f"outputs {[list(g.shape) for g in got]}, max rel err {err:.1e}")

    hid = TEXT["hidden_size"]
    rng = np.random.default_rng(0)
    unet = ort_session(out / "unet" / "model.onnx", threads)
    feeds = {"sample": rng.standard_normal((2, 4, 128, 128), dtype=np.float32),
             "timestep": np.array(999.0, dtype=np.float32),
             "encoder_hidden_states": rng.standard_normal((2, 77, hid), dtype=np.float32)}
    o = unet.run(None, feeds)[0]
    assert o.shape == (2, 4, 128, 128) and o.dtype == np.float32, o.shape
    timings["unet_b2_128x128_s"] = timeit(lambda: unet.run(None, feeds), n)
    log(f"UNet batch 2 x 4x128x128: median {timings['unet_b2_128x128_s'][0]:.3f} s (min {timings['unet_b2_128x128_s'][1]:.3f})")

    dec = ort_session(out / "vae_decoder" / "model.onnx", threads)
    z = {"latent_sample": rng.standard_normal((1, 4, 128, 128), dtype=np.float32)}
    o = dec.run(None, z)[0]
    assert o.shape == (1, 3, 1024, 1024) and o.dtype == np.float32, o.shape
    timings["vae_decode_1024_s"] = timeit(lambda: dec.run(None, z), max(2, n // 2))
    log(f"VAE decode 1x4x128x128 -> 1x3x1024x1024: median {timings['vae_decode_1024_s'][0]:.3f} s")

    enc = ort_session(out / "vae_encoder" / "model.onnx", threads)
    x = {"sample": rng.uniform(-1, 1, (1, 3, 1024, 1024)).astype(np.float32)}
    o = enc.run(None, x)[0]
    assert o.shape == (1, 8, 128, 128), o.shape
    timings["vae_encode_1024_s"] = timeit(lambda: enc.run(None, x), 2)
    log(f"VAE encode 1x3x1024x1024 -> 1x8x128x128: median {timings['vae_encode_1024_s'][0]:.3f} s")

    te = ort_session(out / "text_encoder" / "model.onnx", threads)
    ids = {"input_ids": np.full((2, 77), 49407, dtype=np.int64)}
    timings["text_encoder_b2_s"] = timeit(lambda: te.run(None, ids), n)
    return {"io": io, "timings": timings}


def end_to_end(out: Path, threads: int, steps: int, guidance: float) -> dict:
    """A minimal txt2img loop (Euler, CFG) over the ONNX files, like easel will do it."""
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(out / "tokenizer"))
    sch = EulerDiscreteScheduler.from_pretrained(str(out / "scheduler"))
    te = ort_session(out / "text_encoder" / "model.onnx", threads)
    unet = ort_session(out / "unet" / "model.onnx", threads)
    dec = ort_session(out / "vae_decoder" / "model.onnx", threads)
    scaling = json.loads((out / "vae_decoder" / "config.json").read_text())["scaling_factor"]

    return [run_once(tok, sch, te, unet, dec, scaling, steps, guidance, label)
            for label in ("cold (first calls of fresh sessions)", "warm")]


def run_once(tok, sch, te, unet, dec, scaling, steps, guidance, label) -> dict:
    t0 = time.perf_counter()
    ids = tok(["", "a photo of an astronaut riding a horse on mars"], padding="max_length",
              max_length=77, truncation=True, return_tensors="np")["input_ids"].astype(np.int64)
    emb = te.run(["last_hidden_state"], {"input_ids": ids})[0]
    sch.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    lat = (torch.randn((1, 4, 128, 128), generator=g) * sch.init_noise_sigma)
    for t in sch.timesteps:
        x = sch.scale_model_input(torch.cat([lat] * 2), t)
        eps = unet.run(None, {"sample": x.numpy(), "timestep": np.array(float(t), dtype=np.float32),
                              "encoder_hidden_states": emb})[0]
        eu, ec = eps[:1], eps[1:]
        lat = sch.step(torch.from_numpy(eu + guidance * (ec - eu)), t, lat).prev_sample
    img = dec.run(None, {"latent_sample": (lat / scaling).numpy()})[0]
    dt = time.perf_counter() - t0
    img = np.clip(img / 2 + 0.5, 0, 1)
    assert img.shape == (1, 3, 1024, 1024) and np.isfinite(img).all()
    log(f"end-to-end 1024x1024, {steps} steps, CFG {guidance}, {label}: {dt:.2f} s "
        f"(image mean {img.mean():.3f}, std {img.std():.3f})")
    return {"run": label, "steps": steps, "seconds": dt, "image_mean": float(img.mean()), "image_std": float(img.std())}


def try_diffusers_pipeline(out: Path) -> str:
    try:
        from diffusers import OnnxStableDiffusionPipeline

        pipe = OnnxStableDiffusionPipeline.from_pretrained(str(out), provider="CPUExecutionProvider")
        pipe(["a cat"], height=64, width=64, num_inference_steps=2, guidance_scale=7.5, output_type="np")
        return "ok"
    except Exception as e:  # expected: int32 input_ids / rank-1 timestep hard-coded there
        return f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bpe", required=True, type=Path, help="bpe_simple_vocab_16e6.txt.gz")
    ap.add_argument("--bpe-source", default="PyPI open_clip_torch==3.3.0:open_clip/bpe_simple_vocab_16e6.txt.gz",
                    help="where the BPE file came from (recorded in easel-export.json)")
    ap.add_argument("--out", type=Path, default=REPO / "models" / "tiny-sd")
    ap.add_argument("--fixture", type=Path,
                    default=REPO / "crates" / "diffusion" / "tests" / "fixtures" / "clip_tokens.json")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads for timings")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--preset", choices=("tiny", "small", "script", "sd2-v"), default="tiny",
                    help="small: the SD-1.5-shaped benchmark model (use with --out .easel/models/small-sd "
                         "--no-verify --fixture /dev/null); script and sd2-v: the test fixtures of the other "
                         "exporter convention and of the SD 2.x family (--out crates/diffusion/tests/fixtures/models/"
                         "tiny-sd-script or tiny-sd2-v, --no-verify --fixture /dev/null)")
    args = ap.parse_args()
    apply_preset(args.preset)

    torch.use_deterministic_algorithms(True)
    # One thread: the models are tiny, and idle OpenMP workers would otherwise spin against
    # onnxruntime's threads during the timings.
    torch.set_num_threads(1)
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    log("versions:", versions())
    tok = build_tokenizer(args.bpe, out / "tokenizer")
    records = check_tokenizer(out / "tokenizer") if EXPORT["pad_token"] == "<|endoftext|>" else []
    if records and args.fixture != Path("/dev/null"):
        args.fixture.parent.mkdir(parents=True, exist_ok=True)
        args.fixture.write_text(
            "[\n" + ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n", encoding="utf-8")
        log(f"wrote {args.fixture.relative_to(REPO)} ({len(records)} prompts)")

    sch = write_scheduler(out)
    fingerprints, params, ref = build_models(out)
    write_model_index(out, sch, tok)
    (out / "easel.json").write_text(json.dumps(EASEL, indent=2) + "\n")

    report = {}
    if not args.no_verify:
        report = verify(out, ref, args.threads, args.repeats)
        report["end_to_end"] = end_to_end(out, args.threads, EASEL["default_steps"], EASEL["default_guidance"])
        report["diffusers_OnnxStableDiffusionPipeline"] = try_diffusers_pipeline(out)
        log("diffusers OnnxStableDiffusionPipeline:", report["diffusers_OnnxStableDiffusionPipeline"])

    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != "easel-export.json":
            files[str(p.relative_to(out))] = {"bytes": p.stat().st_size, "sha256": sha256(p)}
    meta = {
        "generator": "infra/models/make_tiny_model.py",
        "seed": SEED,
        "opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=False) (TorchScript)",
        "versions": versions(),
        "bpe": {"source": args.bpe_source, "sha256": sha256(args.bpe)},
        "architecture": {"text_encoder": TEXT, "unet": UNET, "vae": VAE, "scheduler": SCHEDULER},
        "export": EXPORT,
        "parameters": params,
        "weights_sha256": fingerprints,
        "files": files,
    }
    # Timings vary by machine; they are printed and go in the README, not into this file, so that
    # re-running the script gives identical files.
    (out / "easel-export.json").write_text(json.dumps(meta, indent=2) + "\n")
    if report:
        log("timings (median s, min s):", json.dumps(report["timings"]))
        log("end-to-end:", json.dumps(report["end_to_end"]))
    total = sum(f["bytes"] for f in files.values())
    log(f"total {total / 1e6:.2f} MB in {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    for k, v in files.items():
        log(f"  {v['bytes']:>10}  {v['sha256'][:16]}  {k}")


if __name__ == "__main__":
    sys.exit(main())
