"""easel against diffusers' ONNX pipeline: same ONNX folder, sampler, steps, size, guidance, prompt
and initial latents, runs alternating between the two, medians reported.

    .venv-export/bin/python infra/bench/compare.py --model models/tiny-sd --size 1024 --reps 5
    .venv-export/bin/python infra/bench/compare.py --model .easel/models/small-sd --size 256 --reps 5

(`.venv-export` comes from infra/models/make-tiny-model.sh; the small model from
`infra/models/make-tiny-model.sh --preset small --out .easel/models/small-sd --no-verify
 --fixture .easel/models/small-sd-clip-tokens.json`.)

easel runs as `cargo bench -p easel-diffusion --bench txt2img -- --stdin ...` (release build, the
model loaded once), diffusers in this process as `OnnxStableDiffusionPipeline` with sessions made
the same way (intra-op threads = --threads, inter-op 1, all graph optimizations). Per generation:
wall time, the part spent outside ONNX Runtime `run` calls, UNet calls; per process: peak RSS
(VmHWM; the Python figure includes torch and diffusers themselves). One untimed warm-up each.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import diffusers
from diffusers import OnnxRuntimeModel, OnnxStableDiffusionPipeline
from transformers import CLIPTokenizer

ROOT = Path(__file__).resolve().parents[2]
# The same two adjustments the parity references use (optimum's input conventions, a float
# init_noise_sigma), from the one place they are written.
sys.path.insert(0, str(ROOT / "crates" / "diffusion" / "tests" / "fixtures" / "parity"))
from make_parity import DeclaredTypes, float_init_noise_sigma  # noqa: E402
PROMPT = "a photo of an astronaut riding a horse on mars"


class Timed(DeclaredTypes):
    """An ONNX model fed as optimum feeds it (see make_parity.py), timing its runs."""

    def __init__(self, model, clock):
        super().__init__(model)
        self.clock = clock
        self.calls = 0

    def __call__(self, **kwargs):
        started = time.perf_counter()
        out = super().__call__(**kwargs)
        self.clock[0] += time.perf_counter() - started
        self.calls += 1
        return out


def diffusers_pipeline(folder: Path, threads: int, sampler: str, clock):
    def session(component):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        path = str(folder / component / "model.onnx")
        model = OnnxRuntimeModel(model=ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]))
        return Timed(model, clock)

    classes = {"K_EULER": "EulerDiscreteScheduler", "DDIM": "DDIMScheduler", "K_DPMPP_2M": "DPMSolverMultistepScheduler"}
    cls = float_init_noise_sigma(getattr(diffusers, classes[sampler]))
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return OnnxStableDiffusionPipeline(
        vae_encoder=None,
        vae_decoder=session("vae_decoder"),
        text_encoder=session("text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=session("unet"),
        scheduler=cls.from_config(config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def peak_rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "tiny-sd")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--sampler", default="K_EULER", choices=("K_EULER", "DDIM", "K_DPMPP_2M"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    folder = args.model.resolve()

    h = w = args.size // 8
    latents = np.random.default_rng(0).standard_normal((1, 4, h, w)).astype(np.float32)
    scratch = tempfile.mkdtemp()
    latents_path = Path(scratch) / "latents.npy"
    np.save(latents_path, latents)

    env = dict(os.environ)
    env.setdefault("ORT_DYLIB_PATH", str(ROOT / ".easel" / "onnxruntime" / "libonnxruntime.so.1.31.1"))
    command = ["cargo", "bench", "-q", "-p", "easel-diffusion", "--bench", "txt2img", "--", "--stdin",
               "--model", str(folder), "--size", str(args.size), "--steps", str(args.steps),
               "--guidance", str(args.guidance), "--sampler", args.sampler, "--threads", str(args.threads),
               "--prompt", PROMPT, "--latents", str(latents_path)]
    easel = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert json.loads(easel.stdout.readline()).get("ready"), "the easel bench did not start"

    def run_easel():
        easel.stdin.write("run\n")
        easel.stdin.flush()
        return json.loads(easel.stdout.readline())

    clock = [0.0]
    pipe = diffusers_pipeline(folder, args.threads, args.sampler, clock)

    def run_diffusers():
        clock[0] = 0.0
        pipe.unet.calls = 0
        started = time.perf_counter()
        pipe(PROMPT, height=args.size, width=args.size, num_inference_steps=args.steps,
             guidance_scale=args.guidance, latents=latents.copy(), output_type="np")
        total = (time.perf_counter() - started) * 1e3
        return dict(total_ms=total, outside_ort_ms=total - clock[0] * 1e3, unet_calls=pipe.unet.calls,
                    peak_rss_mib=peak_rss_mib())

    pipe.set_progress_bar_config(disable=True)
    run_easel(), run_diffusers()  # warm-up
    ours, theirs = [], []
    for rep in range(args.reps):
        ours.append(run_easel())
        theirs.append(run_diffusers())
        print(f"rep {rep}: easel {ours[-1]['total_ms']:.0f} ms, diffusers {theirs[-1]['total_ms']:.0f} ms",
              file=sys.stderr)
    easel.stdin.close()
    easel.wait()

    def median(runs, key):
        return statistics.median(r[key] for r in runs)

    e_total, d_total = median(ours, "total_ms"), median(theirs, "total_ms")
    e_out, d_out = median(ours, "outside_ort_ms"), median(theirs, "outside_ort_ms")
    print(f"model {folder.name}, {args.size}x{args.size}, {args.sampler}, {args.steps} steps, guidance "
          f"{args.guidance}, {args.threads} threads, {args.reps} alternating reps, medians "
          f"(onnxruntime {ort.__version__}, diffusers {diffusers.__version__})")
    print("| | wall per image | outside ONNX Runtime | UNet calls | peak RSS |")
    print("|---|---|---|---|---|")
    print(f"| easel | {e_total:.0f} ms | {e_out:.1f} ms ({100 * e_out / e_total:.2f} %) | {ours[-1]['unet_calls']} "
          f"| {ours[-1]['peak_rss_mib']:.0f} MiB |")
    print(f"| diffusers | {d_total:.0f} ms | {d_out:.1f} ms ({100 * d_out / d_total:.2f} %) | "
          f"{theirs[-1]['unet_calls']} | {theirs[-1]['peak_rss_mib']:.0f} MiB (incl. torch) |")
    print(f"| easel / diffusers | {e_total / d_total:.3f} | | | |")


if __name__ == "__main__":
    main()
