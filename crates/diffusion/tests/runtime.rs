//! Bringing up ONNX Runtime: errors instead of panics, one environment per process.
//!
//! A single test, because the order matters and ONNX Runtime is process-wide: this binary's
//! first load attempt must be the bad one.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use easel_diffusion::{OrtRuntime, RuntimeError, find_onnxruntime_library};

#[test]
fn loading_is_an_error_not_a_panic_and_happens_once_per_process() {
    let missing = Path::new("/nonexistent/libonnxruntime.so.1.31.1");
    let err = OrtRuntime::init(missing).unwrap_err();
    assert!(matches!(&err, RuntimeError::Load { path, .. } if path == missing), "{err:?}");
    assert!(OrtRuntime::get().is_none(), "a failed load leaves nothing behind");

    let runtime = common::runtime();
    let library = find_onnxruntime_library(&[env!("CARGO_MANIFEST_DIR").into()]).unwrap();
    assert!(std::ptr::eq(OrtRuntime::init(&library).unwrap(), runtime), "init is idempotent");
    assert!(std::ptr::eq(OrtRuntime::get().unwrap(), runtime));

    let err = OrtRuntime::init(missing).unwrap_err();
    assert!(matches!(err, RuntimeError::AlreadyLoaded { .. }), "{err:?}");
}
