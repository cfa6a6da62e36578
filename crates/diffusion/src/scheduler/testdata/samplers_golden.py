"""Golden numbers for every sampler's unit tests, from diffusers 0.42.1 (and k-diffusion's
DPM++ 2S ancestral algorithm) themselves.

Run with the model-export venv (infra/models/make-tiny-model.sh creates it):
    .venv-export/bin/python crates/diffusion/src/scheduler/testdata/samplers_golden.py \
        > crates/diffusion/src/scheduler/testdata/samplers_golden.json

For each sampler, config and step count it records the inference timesteps, the initial noise
scale, and a short trajectory: the model input the scheduler makes from the latents, fixed model
outputs, every Gaussian draw the scheduler makes (its module's `randn_tensor` is wrapped), and the
latents after each step. The Rust tests replay the same outputs and draws and compare.

It also checks that the per-class defaults easel hard-codes (scheduler/config.rs) are still the
`__init__` defaults of the installed diffusers, and fails loudly if not.
"""
import importlib
import json
import sys

import numpy as np
import torch
import diffusers

SD15 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)

CLASSES = {
    "DDIM": ("DDIMScheduler", "scheduling_ddim"),
    "DDPM": ("DDPMScheduler", "scheduling_ddpm"),
    "PNDM": ("PNDMScheduler", "scheduling_pndm"),
    "K_EULER": ("EulerDiscreteScheduler", "scheduling_euler_discrete"),
    "K_EULER_ANCESTRAL": ("EulerAncestralDiscreteScheduler", "scheduling_euler_ancestral_discrete"),
    "K_HEUN": ("HeunDiscreteScheduler", "scheduling_heun_discrete"),
    "K_DPM_2": ("KDPM2DiscreteScheduler", "scheduling_k_dpm_2_discrete"),
    "K_DPM_2_ANCESTRAL": ("KDPM2AncestralDiscreteScheduler", "scheduling_k_dpm_2_ancestral_discrete"),
    "K_LMS": ("LMSDiscreteScheduler", "scheduling_lms_discrete"),
    "K_DPMPP_2M": ("DPMSolverMultistepScheduler", "scheduling_dpmsolver_multistep"),
}

# The defaults easel's config.rs hard-codes, per class, for the keys it reads.
EXPECTED_DEFAULTS = {
    "DDIMScheduler": dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=True,
                          set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"),
    "DDPMScheduler": dict(beta_start=0.0001, variance_type="fixed_small", clip_sample=True, timestep_spacing="leading"),
    "PNDMScheduler": dict(skip_prk_steps=False, set_alpha_to_one=False, timestep_spacing="leading"),
    "EulerDiscreteScheduler": dict(beta_start=0.0001, timestep_spacing="linspace", final_sigmas_type="zero"),
    "EulerAncestralDiscreteScheduler": dict(beta_start=0.0001, timestep_spacing="linspace"),
    "HeunDiscreteScheduler": dict(beta_start=0.00085, beta_end=0.012, clip_sample=False, timestep_spacing="linspace"),
    "KDPM2DiscreteScheduler": dict(beta_start=0.00085, beta_end=0.012, timestep_spacing="linspace"),
    "KDPM2AncestralDiscreteScheduler": dict(beta_start=0.00085, beta_end=0.012, timestep_spacing="linspace"),
    "LMSDiscreteScheduler": dict(beta_start=0.0001, timestep_spacing="linspace"),
    "DPMSolverMultistepScheduler": dict(solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
                                        lower_order_final=True, euler_at_final=False, final_sigmas_type="zero",
                                        timestep_spacing="linspace"),
}


def check_defaults():
    for class_name, expected in EXPECTED_DEFAULTS.items():
        defaults = getattr(diffusers, class_name)().config  # constructed with no arguments
        for key, value in expected.items():
            actual = defaults[key]
            if actual != value:
                sys.exit(f"{class_name}.{key} defaults to {actual!r} in diffusers {diffusers.__version__}, "
                         f"easel's config.rs says {value!r}")


def f32list(t):
    return [float(v) for v in np.asarray(t, dtype=np.float32).reshape(-1)]


class Recorder:
    """Wraps a scheduler module's randn_tensor and keeps every draw."""

    def __init__(self):
        self.draws = []

    def install(self, module_name):
        module = importlib.import_module(f"diffusers.schedulers.{module_name}")
        original = getattr(module, "randn_tensor", None)
        if original is None:  # a deterministic class that never draws
            return lambda: None

        def recording(*args, **kwargs):
            value = original(*args, **kwargs)
            self.draws.append(f32list(value))
            return value

        module.randn_tensor = recording
        return lambda: setattr(module, "randn_tensor", original)


SHAPE = (1, 2, 2, 2)  # [batch, channels, h, w], as a UNet output


def model_output(i, n):
    return torch.tensor(np.cos(np.arange(n, dtype=np.float32) * 0.7 + i).astype(np.float32)).reshape(SHAPE)


def start_latents(init_noise_sigma):
    return torch.tensor(np.linspace(-3, 3, 8, dtype=np.float32)).reshape(SHAPE) * init_noise_sigma


def diffusers_case(sampler, config, steps):
    class_name, module_name = CLASSES[sampler]
    cls = getattr(diffusers, class_name)
    scheduler = cls.from_config(config)
    scheduler.set_timesteps(steps)
    init_noise_sigma = float(scheduler.init_noise_sigma)
    x = start_latents(init_noise_sigma)
    start = f32list(x)
    recorder = Recorder()
    uninstall = recorder.install(module_name)
    torch.manual_seed(0)
    evaluations = []
    try:
        for i, t in enumerate(scheduler.timesteps):
            scaled = scheduler.scale_model_input(x, t)
            out = model_output(i, 8)
            before = len(recorder.draws)
            x = scheduler.step(out, t, x).prev_sample
            evaluations.append(dict(scaled=f32list(scaled), model_output=f32list(out),
                                    noise=recorder.draws[before:], prev=f32list(x)))
    finally:
        uninstall()
    return dict(sampler=sampler, config=config, steps=steps, timesteps=f32list(scheduler.timesteps.float()),
                init_noise_sigma=init_noise_sigma, start=start, evaluations=evaluations)


def dpmpp_2s_ancestral_case(config, steps):
    """k-diffusion's sample_dpmpp_2s_ancestral (crowsonkb/k-diffusion, MIT, k_diffusion/sampling.py,
    copied below step for step) on EulerDiscreteScheduler's σs, with a denoiser that turns the fixed
    model outputs into x₀ estimates as the pipeline does (epsilon prediction)."""
    scheduler = diffusers.EulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.float()
    log_sigmas = np.log(np.array(((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5))
    init_noise_sigma = float(scheduler.init_noise_sigma)
    x = start_latents(init_noise_sigma)
    start = f32list(x)
    evaluations = []
    timesteps = []
    torch.manual_seed(0)

    def model(x, sigma):
        i = len(evaluations)
        matches = (sigmas[:-1] == sigma).nonzero()
        t = float(scheduler.timesteps[matches[0][0]]) if len(matches) else float(
            scheduler._sigma_to_t(np.array(float(sigma)), log_sigmas))
        timesteps.append(np.float32(t))
        scaled = x / ((sigma ** 2 + 1) ** 0.5)
        out = model_output(i, 8)
        evaluations.append(dict(scaled=f32list(scaled), model_output=f32list(out), noise=[]))
        return x - sigma * out

    sigma_fn = lambda t: t.neg().exp()
    t_fn = lambda sigma: sigma.log().neg()
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_from, sigma_to = sigmas[i], sigmas[i + 1]
        sigma_up = min(sigma_to, (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
        sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
        if sigma_down == 0:
            d = (x - denoised) / sigmas[i]
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (sigma_fn(s) / sigma_fn(t)) * x - (-h * r).expm1() * denoised
            evaluations[-1]["prev"] = f32list(x_2)
            denoised_2 = model(x_2, sigma_fn(s))
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            noise = torch.randn_like(x)
            evaluations[-1]["noise"].append(f32list(noise))
            x = x + noise * sigma_up
        evaluations[-1]["prev"] = f32list(x)
    return dict(sampler="K_DPMPP_2S_ANCESTRAL", config=config, steps=steps, timesteps=f32list(timesteps),
                init_noise_sigma=init_noise_sigma, start=start, evaluations=evaluations)


def main():
    check_defaults()
    cases = []
    configs = [
        dict(SD15),  # SD 1.5's values; each class's own default spacing
        dict(SD15, timestep_spacing="linspace"),
        dict(SD15, timestep_spacing="trailing"),
        dict(SD15, prediction_type="v_prediction", timestep_spacing="leading"),
        dict(SD15, use_karras_sigmas=True),
        dict(SD15, _class_name="PNDMScheduler", skip_prk_steps=True, set_alpha_to_one=False, clip_sample=False),
    ]
    for sampler in CLASSES:
        for config in configs:
            for steps in (1, 4, 7):
                if sampler == "PNDM" and steps < 4 and not config.get("skip_prk_steps"):
                    continue  # diffusers' PRK warm-up needs four steps
                cases.append(diffusers_case(sampler, config, steps))
    for config in (dict(SD15), dict(SD15, use_karras_sigmas=True), dict(SD15, timestep_spacing="trailing")):
        for steps in (1, 4, 7):
            cases.append(dpmpp_2s_ancestral_case(config, steps))
    # DPM-Solver++ switches orders by step count (lower_order_final below 15 steps).
    cases.append(diffusers_case("K_DPMPP_2M", dict(SD15), 20))
    print(json.dumps(dict(diffusers=diffusers.__version__, torch=torch.__version__, cases=cases)))


if __name__ == "__main__":
    main()
