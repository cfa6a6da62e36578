//! Wall-clock benchmark of image moderation: NudeNet on one image, split into preprocessing (pad
//! and OpenCV-exact resize to 320) and the detector's run plus postprocessing.
//!
//! ```text
//! cargo bench -p easel-diffusion --bench moderation -- [--model FILE] [--size PX] [--runs N] [--threads N]
//! ```
//! Defaults: `.easel/models/nudenet/320n.onnx`, a 1024² image (the tiny model's kind of output:
//! seeded noise), 50 timed runs after 3 warm-up runs, 2 intra-op threads. Prints the median and
//! the 95th percentile of each part.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use easel_diffusion::nudenet::pad_and_resize;
use easel_diffusion::{NudeNet, OrtRuntime, find_onnxruntime_library};
use rand::{Rng, SeedableRng};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut model = root.join(".easel/models/nudenet/320n.onnx");
    let (mut size, mut runs, mut threads) = (1024usize, 50usize, 2usize);
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = PathBuf::from(value()),
            "--size" => size = value().parse().unwrap(),
            "--runs" => runs = value().parse().unwrap(),
            "--threads" => threads = value().parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    let library = find_onnxruntime_library(&[root]).expect("ONNX Runtime not found: run `make setup`");
    let runtime = OrtRuntime::init(&library).unwrap();
    let started = Instant::now();
    let detector = NudeNet::load(runtime, &model, threads).unwrap();
    println!("loaded {} in {:.0} ms ({threads} intra-op threads)", detector.id(), ms(started.elapsed()));

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let rgb: Vec<u8> = (0..size * size * 3).map(|_| rng.random()).collect();
    let (mut prep, mut total) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for run in 0..runs + 3 {
        let t0 = Instant::now();
        std::hint::black_box(pad_and_resize(&rgb, size, size, detector.side()));
        let t1 = Instant::now();
        std::hint::black_box(detector.analyse(&rgb, size, size).unwrap());
        let t2 = Instant::now();
        if run >= 3 {
            prep.push(t1 - t0);
            // analyse() includes its own preprocessing: the moderation of one image end to end.
            total.push(t2 - t1);
        }
    }
    let stat = |v: &mut Vec<Duration>| {
        v.sort();
        (ms(v[v.len() / 2]), ms(v[(v.len() * 95 / 100).min(v.len() - 1)]))
    };
    let ((prep_median, prep_p95), (total_median, total_p95)) = (stat(&mut prep), stat(&mut total));
    println!("{size}x{size}, {runs} runs:");
    println!("  preprocessing (pad + resize to 320):  median {prep_median:6.2} ms   p95 {prep_p95:6.2} ms");
    println!("  moderation of one image, end to end:  median {total_median:6.2} ms   p95 {total_p95:6.2} ms");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
