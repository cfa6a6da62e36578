//! NudeNet's detector (an Ultralytics YOLOv8, `320n.onnx` from the `nudenet` wheel), run the way
//! `nudenet` 3.4.2's Python runs it, so that easel's detections are the package's (DESIGN.md §6):
//!
//! 1. pad right and bottom with black to a square, resize it to the model's side with OpenCV's
//!    8-bit bilinear ([`resize`]);
//! 2. channels in the order nudenet feeds them: it reads files as BGR (OpenCV), converts with
//!    `COLOR_RGBA2BGR` (a swap on a 3-channel image) and then asks `blobFromImage` to swap again,
//!    so the planes it hands the model are B, G, R of the picture; scaled by 1/255, NCHW;
//! 3. the output `[1, 4 + classes, anchors]`: anchors whose best class score is ≥ 0.2 become
//!    boxes (centre → corner, scaled by square side / model side, clipped to the image), then
//!    OpenCV's `NMSBoxes` (class-agnostic, score > 0.25, IoU ≤ 0.45), boxes truncated to integers.
//!
//! [`NudeNetModerator`] puts a [`ClassThresholds`] policy over it for the worker.

mod resize;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use easel_core::generator::GeneratedImage;
use easel_core::moderation::{ClassThresholds, Detection, ImageVerdict, ModerationError, Moderator};
use ort::value::TensorRef;
use sha2::{Digest, Sha256};

use crate::device::Device;
use crate::error::LoadError;
use crate::onnx::{Graph, SessionSettings, fixed_dim, float_output, open_nchw_graph};
use crate::runtime::OrtRuntime;

pub use resize::pad_and_resize;

/// NudeNet's classes, in the order of its model's outputs (used when the model's metadata does
/// not name them).
pub const NUDENET_LABELS: [&str; 18] = [
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
];

/// nudenet's candidate threshold (`max_score >= 0.2`).
const CANDIDATE_SCORE: f32 = 0.2;
/// `cv2.dnn.NMSBoxes(boxes, scores, 0.25, 0.45)`.
const NMS_SCORE: f32 = 0.25;
const NMS_IOU: f32 = 0.45;

/// What the detector saw in one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// nudenet's answer: one detection per box kept by NMS, best first.
    pub detections: Vec<Detection>,
    /// The highest score of each class over every anchor, whether or not it made a detection.
    pub class_max: BTreeMap<String, f32>,
}

/// A loaded NudeNet-compatible detector. `Session::run` needs `&mut`, so runs take turns.
#[derive(Debug)]
pub struct NudeNet {
    graph: Graph,
    input: String,
    labels: Vec<String>,
    side: usize,
    id: String,
}

impl NudeNet {
    /// Loads `path` (an Ultralytics YOLOv8 detection export: input `[batch, 3, h, w]`, output
    /// `[batch, 4 + classes, anchors]`). The side is the graph's fixed input size, else the
    /// `imgsz` of its metadata, else 320; the labels are its metadata's `names`, else NudeNet's.
    pub fn load(runtime: &OrtRuntime, path: &Path, intra_threads: usize) -> Result<NudeNet, LoadError> {
        if !path.is_file() {
            return Err(LoadError::MissingFile {
                path: path.to_path_buf(),
                expected: "NudeNet's 320n.onnx: `make setup` (or infra/setup.sh) installs it from the nudenet wheel; \
                           EASEL_MODERATION_MODEL names another file",
            });
        }
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let settings = SessionSettings { intra_threads, device: Device::Cpu };
        let (session, input, channels) = open_nchw_graph(runtime, path, "images", settings)?;
        if channels.is_some_and(|c| c != 3) {
            return Err(LoadError::invalid(path, "the input must have 3 channels"));
        }
        let input_shape = session.inputs().iter().find(|i| i.name() == input).and_then(|i| match i.dtype() {
            ort::value::ValueType::Tensor { shape, .. } => Some(shape.to_vec()),
            _ => None,
        });
        let metadata = session.metadata().ok();
        let custom = |key: &str| metadata.as_ref().and_then(|m| m.custom(key));
        let side = input_shape
            .as_deref()
            .and_then(|shape| fixed_dim(shape, 2))
            .or_else(|| custom("imgsz").and_then(|v| parse_imgsz(&v)))
            .unwrap_or(320);
        let labels = match custom("names") {
            Some(names) => parse_names(&names).ok_or_else(|| {
                LoadError::invalid(path, format!("its metadata `names` is not a class list: {names}"))
            })?,
            None => NUDENET_LABELS.iter().map(|s| (*s).to_owned()).collect(),
        };
        let (output, shape) = float_output(&session, "output0", 3, path)?;
        if let Some(rows) = fixed_dim(shape, 1)
            && rows != 4 + labels.len()
        {
            return Err(LoadError::invalid(
                path,
                format!("output {output:?} has {rows} rows; expected 4 box rows + {} classes", labels.len()),
            ));
        }
        drop(metadata);
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let id = format!("nudenet:{stem}@{}", &digest[..8]);
        Ok(NudeNet { graph: Graph::new(session, path, output)?, input, labels, side, id })
    }

    /// `nudenet:<file stem>@<first 8 hex digits of its SHA-256>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The model's input side in pixels.
    pub fn side(&self) -> usize {
        self.side
    }

    /// The model's input for an RGB image: NCHW float planes B, G, R in [0, 1] (nudenet's order).
    pub fn input_tensor(&self, rgb: &[u8], width: usize, height: usize) -> Vec<f32> {
        let side = self.side;
        let resized = pad_and_resize(rgb, width, height, side);
        // blobFromImage multiplies by the scale factor converted to float.
        let scale = (1.0f64 / 255.0) as f32;
        let mut planes = vec![0f32; 3 * side * side];
        for (i, pixel) in resized.chunks_exact(3).enumerate() {
            for (plane, channel) in [2usize, 1, 0].into_iter().enumerate() {
                planes[plane * side * side + i] = f32::from(pixel[channel]) * scale;
            }
        }
        planes
    }

    /// Runs the detector on an RGB image (`width`×`height`, 3 bytes a pixel).
    pub fn analyse(&self, rgb: &[u8], width: usize, height: usize) -> Result<Analysis, ModerationError> {
        if width == 0 || height == 0 || rgb.len() != width * height * 3 {
            return Err(ModerationError(format!("an RGB image of {width}x{height} cannot have {} bytes", rgb.len())));
        }
        let side = self.side;
        let planes = self.input_tensor(rgb, width, height);
        let tensor = TensorRef::from_array_view(([1usize, 3, side, side], &planes[..]))
            .map_err(|e| ModerationError(format!("building the detector's input: {e}")))?;
        let classes = self.labels.len();
        let (rows, anchors, output) = self
            .graph
            .run(vec![(Cow::from(self.input.as_str()), tensor.into())], |shape, data| match *shape {
                [1, rows, anchors] if rows as usize == 4 + classes && anchors > 0 => {
                    Ok((rows as usize, anchors as usize, data.to_vec()))
                }
                _ => Err(easel_core::generator::GenerateError::Engine {
                    message: format!(
                        "the detector's output has shape {shape:?}; expected [1, {}, anchors]",
                        4 + classes
                    ),
                    source: None,
                }),
            })
            .map_err(|e| ModerationError(e.to_string()))?;
        debug_assert_eq!(rows * anchors, output.len());
        Ok(postprocess(&output, anchors, &self.labels, width, height, side))
    }
}

/// nudenet's `_postprocess` over a `[4 + classes, anchors]` output (row-major).
fn postprocess(
    output: &[f32],
    anchors: usize,
    labels: &[String],
    width: usize,
    height: usize,
    side: usize,
) -> Analysis {
    let value = |row: usize, anchor: usize| output[row * anchors + anchor];
    let mut class_max: Vec<f32> = vec![f32::NEG_INFINITY; labels.len()];
    let mut candidates: Vec<(usize, f32, [f32; 4])> = Vec::new();
    let square = width.max(height) as f32;
    let (w_img, h_img) = (width as f32, height as f32);
    for anchor in 0..anchors {
        // np.argmax: the first of equal maxima.
        let (mut class, mut best) = (0, f32::NEG_INFINITY);
        for (k, max) in class_max.iter_mut().enumerate() {
            let score = value(4 + k, anchor);
            *max = max.max(score);
            if score > best {
                (class, best) = (k, score);
            }
        }
        if best < CANDIDATE_SCORE {
            continue;
        }
        let (cx, cy, w, h) = (value(0, anchor), value(1, anchor), value(2, anchor), value(3, anchor));
        // In float32 and in nudenet's order of operations.
        let x = (cx - w / 2.0) * square / side as f32;
        let y = (cy - h / 2.0) * square / side as f32;
        let w = w * square / side as f32;
        let h = h * square / side as f32;
        let x = x.min(w_img).max(0.0);
        let y = y.min(h_img).max(0.0);
        let w = w.min(w_img - x);
        let h = h.min(h_img - y);
        candidates.push((class, best, [x, y, w, h]));
    }
    let detections = nms_boxes(&candidates)
        .into_iter()
        .map(|i| {
            let (class, score, [x, y, w, h]) = candidates[i];
            Detection { class: labels[class].clone(), score, bbox: [x as i32, y as i32, w as i32, h as i32] }
        })
        .collect();
    let class_max = labels.iter().cloned().zip(class_max).collect();
    Analysis { detections, class_max }
}

/// `cv2.dnn.NMSBoxes(boxes, scores, 0.25, 0.45)` for `Rect2d` boxes: the indices kept, best first.
/// Written out because its exact rules decide which boxes survive: scores strictly above the
/// threshold, a stable sort by score, and a box kept when its overlap with every kept box is at
/// most the IoU threshold (overlap computed in double, compared in float).
fn nms_boxes(candidates: &[(usize, f32, [f32; 4])]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).filter(|&i| candidates[i].1 > NMS_SCORE).collect();
    order.sort_by(|&a, &b| candidates[b].1.total_cmp(&candidates[a].1));
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        if kept.iter().all(|&k| overlap(&candidates[i].2, &candidates[k].2) <= NMS_IOU) {
            kept.push(i);
        }
    }
    kept
}

/// OpenCV's `rectOverlap` for `Rect2d`: `1 − jaccardDistance`, where two boxes of no total area
/// are the same box.
fn overlap(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let [ax, ay, aw, ah] = a.map(f64::from);
    let [bx, by, bw, bh] = b.map(f64::from);
    let (area_a, area_b) = (aw * ah, bw * bh);
    if area_a + area_b <= f64::EPSILON {
        return 1.0;
    }
    let iw = (ax + aw).min(bx + bw) - ax.max(bx);
    let ih = (ay + ah).min(by + bh) - ay.max(by);
    let inter = if aw <= 0.0 || ah <= 0.0 || bw <= 0.0 || bh <= 0.0 || iw <= 0.0 || ih <= 0.0 { 0.0 } else { iw * ih };
    let distance = 1.0 - inter / (area_a + area_b - inter);
    1.0 - distance as f32
}

/// Ultralytics' `imgsz` metadata: `[320, 320]` or `320`.
fn parse_imgsz(value: &str) -> Option<usize> {
    value.trim_matches(|c| c == '[' || c == ']').split(',').next()?.trim().parse().ok()
}

/// Ultralytics' `names` metadata, a Python dict literal: `{0: 'FACE', 1: 'FEET'}`.
fn parse_names(value: &str) -> Option<Vec<String>> {
    let inner = value.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut names = Vec::new();
    for (expected, entry) in inner.split(',').enumerate() {
        let (index, name) = entry.split_once(':')?;
        if index.trim().parse::<usize>().ok()? != expected {
            return None;
        }
        let name = name.trim().trim_matches(|c| c == '\'' || c == '"');
        if name.is_empty() {
            return None;
        }
        names.push(name.to_owned());
    }
    (!names.is_empty()).then_some(names)
}

/// The worker's image moderator: NudeNet's detector under a [`ClassThresholds`] policy.
#[derive(Debug)]
pub struct NudeNetModerator {
    detector: NudeNet,
    policy: ClassThresholds,
}

impl NudeNetModerator {
    /// Fails when the policy names a class the model does not have (a typo would flag nothing).
    pub fn new(detector: NudeNet, policy: ClassThresholds) -> Result<Self, String> {
        let unknown: Vec<&str> =
            policy.classes().map(|(c, _)| c).filter(|c| !detector.labels.iter().any(|l| l == c)).collect();
        if !unknown.is_empty() {
            return Err(format!(
                "the moderation policy names classes the model does not have: {}; its classes are {}",
                unknown.join(", "),
                detector.labels.join(", ")
            ));
        }
        Ok(NudeNetModerator { detector, policy })
    }

    /// Loads the detector at `path` under `policy`: what the worker does once at start. A
    /// missing or unloadable file, or a policy naming a class the model lacks, is an error that
    /// says how to fix it; there is no fallback to unmoderated images.
    pub fn load(runtime: &OrtRuntime, path: &Path, policy: ClassThresholds) -> Result<Self, LoadError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let detector = NudeNet::load(runtime, path, threads)?;
        NudeNetModerator::new(detector, policy).map_err(|message| LoadError::invalid(path, message))
    }

    pub fn detector(&self) -> &NudeNet {
        &self.detector
    }
}

impl Moderator for NudeNetModerator {
    fn model_id(&self) -> &str {
        self.detector.id()
    }

    fn moderate(&self, image: &GeneratedImage) -> Result<ImageVerdict, ModerationError> {
        let analysis = self.detector.analyse(&image.rgb, image.width as usize, image.height as usize)?;
        Ok(self.policy.judge(analysis.class_max, analysis.detections))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["A".into(), "B".into()]
    }

    /// A `[6, anchors]` output from per-anchor rows `[cx, cy, w, h, score_a, score_b]`.
    fn output(rows: &[[f32; 6]]) -> Vec<f32> {
        (0..6).flat_map(|r| rows.iter().map(move |a| a[r])).collect()
    }

    #[test]
    fn overlapping_boxes_keep_the_best_and_distant_ones_survive() {
        let out = output(&[
            [100.0, 100.0, 50.0, 50.0, 0.6, 0.1],
            [102.0, 101.0, 50.0, 50.0, 0.1, 0.9],
            [250.0, 250.0, 40.0, 40.0, 0.3, 0.0],
            [10.0, 10.0, 5.0, 5.0, 0.22, 0.0],
        ]);
        let analysis = postprocess(&out, 4, &labels(), 320, 320, 320);
        let found: Vec<(&str, f32)> = analysis.detections.iter().map(|d| (d.class.as_str(), d.score)).collect();
        // The B box suppresses the A box over it; 0.22 is a candidate but under NMS's 0.25.
        assert_eq!(found, vec![("B", 0.9), ("A", 0.3)]);
        assert_eq!(analysis.detections[0].bbox, [77, 76, 50, 50]);
        assert_eq!(analysis.class_max["A"], 0.6);
    }

    #[test]
    fn boxes_are_scaled_to_the_padded_square_and_clipped_to_the_image() {
        // A 640x480 image is padded to 640x640: model pixels are 2 image pixels.
        let out = output(&[[300.0, 230.0, 60.0, 40.0, 0.8, 0.0]]);
        let analysis = postprocess(&out, 1, &labels(), 640, 480, 320);
        assert_eq!(analysis.detections[0].bbox, [540, 420, 100, 60], "{:?}", analysis.detections);
    }

    #[test]
    fn nothing_above_the_candidate_threshold_means_no_detections() {
        let out = output(&[[10.0, 10.0, 5.0, 5.0, 0.19, 0.05]]);
        let analysis = postprocess(&out, 1, &labels(), 64, 64, 320);
        assert!(analysis.detections.is_empty());
        assert_eq!(analysis.class_max["B"], 0.05);
    }

    #[test]
    fn ultralytics_metadata_names_and_size_are_read() {
        assert_eq!(parse_imgsz("[640, 640]"), Some(640));
        assert_eq!(parse_imgsz("320"), Some(320));
        assert_eq!(parse_names("{0: 'FACE', 1: \"FEET\"}"), Some(vec!["FACE".to_owned(), "FEET".to_owned()]));
        assert_eq!(parse_names("{1: 'FACE'}"), None);
        assert_eq!(parse_names("FACE"), None);
    }
}
