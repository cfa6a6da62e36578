//! easel's NudeNet detector against the `nudenet` Python package: on scikit-image's sample
//! photographs and on images of the tiny test model, the same padded and resized input (bit for
//! bit), the same per-class scores (within 1e-3) and the same detections (same classes, scores
//! within 1e-3, boxes within 1 px). The references come from `infra/moderation/make-parity.sh`;
//! this test needs no Python, only the model `make setup` installs.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use easel_core::generator::GeneratedImage;
use easel_core::moderation::{ClassThresholds, Moderator};
use easel_diffusion::nudenet::pad_and_resize;
use easel_diffusion::{NudeNet, NudeNetModerator};
use serde_json::Value;
use sha2::{Digest, Sha256};

const SCORE_TOLERANCE: f64 = 1e-3;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/moderation")
}

/// The installed model (`make setup`), or `EASEL_MODERATION_MODEL`.
fn model_path() -> PathBuf {
    std::env::var_os("EASEL_MODERATION_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.easel/models/nudenet/320n.onnx"))
}

fn detector() -> &'static NudeNet {
    static DETECTOR: OnceLock<NudeNet> = OnceLock::new();
    DETECTOR.get_or_init(|| {
        NudeNet::load(common::runtime(), &model_path(), 1)
            .unwrap_or_else(|e| panic!("{}; run `make setup` to install the moderation model", common::chain(&e)))
    })
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("nudenet-reference.json")).unwrap()).unwrap()
}

/// A PNG as OpenCV's `imread(path)` sees it: 8 bits, gray replicated, alpha dropped; as RGB.
fn read_rgb(path: &Path) -> (Vec<u8>, usize, usize) {
    let mut decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (width, height) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    let rgb = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .flat_map(|p| match channels {
            1 | 2 => [p[0], p[0], p[0]],
            _ => [p[0], p[1], p[2]],
        })
        .collect();
    (rgb, width, height)
}

fn images(reference: &Value) -> Vec<(String, Value)> {
    let images = reference["images"].as_object().unwrap();
    assert!(images.len() >= 8, "the reference covers photographs and tiny-model images: {:?}", images.keys());
    images.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[test]
fn the_padded_and_resized_input_is_bit_identical_to_opencvs() {
    for (name, expected) in images(&reference()) {
        let (rgb, width, height) = read_rgb(&fixtures().join(&name));
        assert_eq!(
            (width as u64, height as u64),
            (expected["width"].as_u64().unwrap(), expected["height"].as_u64().unwrap())
        );
        let resized = pad_and_resize(&rgb, width, height, 320);
        assert_eq!(hex::encode(Sha256::digest(&resized)), expected["input_sha256"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn detections_and_class_scores_match_the_nudenet_package() {
    let detector = detector();
    let mut fired = 0;
    println!("{:<28} {:<22} {:>9} {:>9} {:>9}  box (python / easel)", "image", "class", "python", "easel", "|Δ|");
    for (name, expected) in images(&reference()) {
        let (rgb, width, height) = read_rgb(&fixtures().join(&name));
        let analysis = detector.analyse(&rgb, width, height).unwrap();
        let mut worst = 0f64;
        for (class, want) in expected["class_max"].as_object().unwrap() {
            let got = f64::from(analysis.class_max[class]);
            worst = worst.max((got - want.as_f64().unwrap()).abs());
        }
        assert!(worst < SCORE_TOLERANCE, "{name}: a class's highest score differs by {worst}");
        let want = expected["detections"].as_array().unwrap();
        assert_eq!(analysis.detections.len(), want.len(), "{name}: {:?} vs {want:?}", analysis.detections);
        for (got, want) in analysis.detections.iter().zip(want) {
            assert_eq!(got.class, want["class"].as_str().unwrap(), "{name}");
            let delta = (f64::from(got.score) - want["score"].as_f64().unwrap()).abs();
            assert!(delta < SCORE_TOLERANCE, "{name}: {} score {} vs {want}", got.class, got.score);
            let boxes: Vec<i64> = want["box"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            for (g, w) in got.bbox.iter().zip(&boxes) {
                assert!((i64::from(*g) - w).abs() <= 1, "{name}: box {:?} vs {boxes:?}", got.bbox);
            }
            println!(
                "{name:<28} {:<22} {:>9.6} {:>9.6} {delta:>9.1e}  {boxes:?} / {:?}",
                got.class,
                want["score"].as_f64().unwrap(),
                got.score,
                got.bbox
            );
            fired += 1;
        }
        if want.is_empty() {
            println!("{name:<28} {:<22} (no detections; largest class-score |Δ| {worst:.1e})", "-");
        }
    }
    assert!(fired >= 3, "the references must prove the detector fires (faces in astronaut.png and camera.png)");
}

#[test]
fn a_low_threshold_on_a_benign_class_flags_a_photograph_and_the_default_policy_does_not() {
    let (rgb, width, height) = read_rgb(&fixtures().join("astronaut.png"));
    let image = GeneratedImage { width: width as u32, height: height as u32, seed: 0, rgb };
    let load = || NudeNet::load(common::runtime(), &model_path(), 1).unwrap();

    let strict = NudeNetModerator::new(load(), ClassThresholds::parse("FACE_FEMALE=0.5").unwrap()).unwrap();
    let verdict = strict.moderate(&image).unwrap();
    assert!(verdict.flagged, "{verdict:?}");
    assert!(verdict.reasons[0].starts_with("FACE_FEMALE 0.7"), "{:?}", verdict.reasons);
    assert!(strict.model_id().starts_with("nudenet:320n@"), "{}", strict.model_id());

    let default = NudeNetModerator::new(load(), ClassThresholds::nudenet_default()).unwrap();
    let verdict = default.moderate(&image).unwrap();
    assert!(!verdict.flagged, "{verdict:?}");
    assert_eq!(verdict.scores.len(), 18, "every class's score is recorded");
    assert_eq!(verdict.detections[0].class, "FACE_FEMALE");
}

#[test]
fn a_policy_naming_a_class_the_model_does_not_have_is_refused() {
    let err = NudeNetModerator::new(
        NudeNet::load(common::runtime(), &model_path(), 1).unwrap(),
        ClassThresholds::parse("FEMALE_BREAST_EXPOSD=0.5").unwrap(),
    )
    .unwrap_err();
    assert!(err.contains("FEMALE_BREAST_EXPOSD") && err.contains("FEMALE_BREAST_EXPOSED"), "{err}");
}

#[test]
fn a_missing_or_corrupt_model_file_is_refused_with_how_to_install_it() {
    let missing = NudeNet::load(common::runtime(), Path::new("/nonexistent/320n.onnx"), 1).unwrap_err();
    assert!(common::chain(&missing).contains("make setup"), "{}", common::chain(&missing));

    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("320n.onnx");
    let mut bytes = std::fs::read(model_path()).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, bytes).unwrap();
    let err = NudeNet::load(common::runtime(), &corrupt, 1).unwrap_err();
    assert!(common::chain(&err).contains("320n.onnx"), "{}", common::chain(&err));
}
