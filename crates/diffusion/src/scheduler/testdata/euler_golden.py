"""Golden numbers for the Euler scheduler unit tests, from diffusers itself.

Run with a Python that has diffusers 0.42.1 and torch (e.g. the model-export venv):
    python crates/diffusion/src/scheduler/testdata/euler_golden.py > crates/diffusion/src/scheduler/testdata/euler_golden.json
Floats are written with repr() of the float32 value promoted to float64, so they parse back exactly.
"""
import json

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler

SD15 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


def f32list(t):
    return [float(v) for v in np.asarray(t, dtype=np.float32)]


schedules = []
for spacing in ("linspace", "leading", "trailing"):
    for steps in (1, 2, 3, 7, 10, 25, 30, 50, 61, 150):
        schedules.append(dict(config=dict(SD15, timestep_spacing=spacing), steps=steps))
for steps in (4, 10, 25):
    schedules.append(dict(config=dict(SD15, use_karras_sigmas=True), steps=steps))
schedules.append(dict(config={}, steps=10))  # class defaults: linear betas, steps_offset 0
schedules.append(dict(config=dict(SD15, timestep_spacing="trailing", rescale_betas_zero_snr=True), steps=10))
schedules.append(dict(config=dict(SD15, final_sigmas_type="sigma_min"), steps=10))
schedules.append(dict(config=dict(SD15, beta_schedule="squaredcos_cap_v2"), steps=10))

for case in schedules:
    s = EulerDiscreteScheduler(**case["config"])
    s.set_timesteps(case["steps"])
    case["timesteps"] = f32list(s.timesteps)
    case["sigmas"] = f32list(s.sigmas)
    case["init_noise_sigma"] = float(s.init_noise_sigma)

trajectories = []
for prediction_type in ("epsilon", "v_prediction", "sample"):
    for spacing in ("linspace", "leading"):
        config = dict(SD15, prediction_type=prediction_type, timestep_spacing=spacing)
        s = EulerDiscreteScheduler(**config)
        s.set_timesteps(4)
        x = torch.tensor(np.linspace(-3, 3, 8, dtype=np.float32)) * s.init_noise_sigma
        start = f32list(x)
        steps = []
        for i, t in enumerate(s.timesteps):
            scaled = s.scale_model_input(x, t)
            out = torch.tensor(np.cos(np.arange(8, dtype=np.float32) + i).astype(np.float32))
            x = s.step(out, t, x).prev_sample
            steps.append(dict(model_output=f32list(out), scaled=f32list(scaled), prev=f32list(x)))
        trajectories.append(dict(config=config, steps_count=4, start=start, steps=steps))

print(json.dumps(dict(schedules=schedules, trajectories=trajectories)))
