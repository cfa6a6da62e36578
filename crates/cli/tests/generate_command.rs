//! `easel generate` as a user runs it: a real process, the bundled default model, files on disk.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap().to_path_buf()
}

/// `easel` with the default model folder (the bundled `models/easel-shapes`).
fn easel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_easel"))
        .args(args)
        .current_dir(workspace_root())
        .env("EASEL_LOG", "warn")
        .env_remove("EASEL_MODEL_DIR")
        .output()
        .unwrap()
}

/// `easel` on the random-weight test model, whose VAE factor (8) and size rules these tests spell out.
fn easel_tiny(args: &[&str]) -> Output {
    let mut with_model = args.to_vec();
    with_model.extend(["--model", "models/tiny-sd"]);
    easel(&with_model)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn generate_writes_one_png_per_seed_with_the_sampler_and_style_asked_for() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let output = easel(&[
        "generate",
        "a lighthouse",
        "--sampler",
        "K_HEUN",
        "--steps",
        "3",
        "--size",
        "128x64",
        "--seed",
        "40",
        "--n",
        "2",
        "--style",
        "anime",
        "--negative",
        "fog",
        "--out",
        dir,
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("seed 40") && stdout.contains("seed 41"), "{stdout}");
    assert!(stdout.contains("K_HEUN") && stdout.contains("(5 UNet calls)"), "{stdout}");
    for seed in [40, 41] {
        let bytes = std::fs::read(out.path().join(format!("{seed}.png"))).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let info = decoder.read_info().unwrap();
        assert_eq!((info.info().width, info.info().height), (128, 64));
    }
}

#[test]
fn generate_starts_from_an_init_image_and_from_explicit_latents() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let first = easel_tiny(&["generate", "a fox", "--steps", "2", "--size", "64x64", "--seed", "7", "--out", dir]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let init = out.path().join("7.png");
    let img2img_dir = out.path().join("img2img");
    let second = easel_tiny(&[
        "generate",
        "a fox at night",
        "--steps",
        "4",
        "--size",
        "128x128",
        "--seed",
        "8",
        "--init-image",
        init.to_str().unwrap(),
        "--strength",
        "0.5",
        "--out",
        img2img_dir.to_str().unwrap(),
    ]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).contains("(2 UNet calls)"),
        "strength 0.5 of 4 steps runs 2: {}",
        text(&second.stdout)
    );

    let latents = out.path().join("latents.npy");
    ndarray_npy::write_npy(&latents, &ndarray::Array4::<f32>::from_elem((1, 4, 8, 8), 0.5)).unwrap();
    let run = |seed: &str, sub: &str| {
        let target = out.path().join(sub);
        let output = easel_tiny(&[
            "generate",
            "x",
            "--steps",
            "2",
            "--size",
            "64x64",
            "--seed",
            seed,
            "--latents",
            latents.to_str().unwrap(),
            "--out",
            target.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        std::fs::read_dir(&target).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect::<Vec<_>>()
    };
    // The PNGs record their seed, so compare the decoded pixels.
    let pixels = |files: Vec<Vec<u8>>| {
        let decoder = png::Decoder::new(std::io::Cursor::new(files.into_iter().next().unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        buf
    };
    assert_eq!(pixels(run("1", "a")), pixels(run("2", "b")), "explicit latents replace the seed's noise");
}

#[test]
fn generate_refuses_bad_input_with_a_message_and_no_panic() {
    let cases: [(&[&str], &str); 5] = [
        (&["generate", "x", "--sampler", "K_FAST"], "K_DPMPP_2S_ANCESTRAL"),
        (&["generate", "x", "--style", "watercolour"], "pixel-art"),
        (&["generate", "x", "--size", "100x64"], "multiple of 64"),
        (&["generate", "x", "--steps", "0"], "steps must be between 1"),
        (&["generate", "x", "--init-image", "Cargo.toml"], "PNG, JPEG or WebP"),
    ];
    for (args, words) in cases {
        let output = easel_tiny(args);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(words), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
