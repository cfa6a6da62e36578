//! Errors of this crate. Generation errors use the port's [`easel_core::generator::GenerateError`];
//! the two enums here cover what happens before a generation can run: bringing up ONNX Runtime
//! ([`RuntimeError`]) and loading a model folder ([`LoadError`]).

use std::path::PathBuf;

/// ONNX Runtime could not be brought up. Every variant is an installation problem, not a request
/// problem: the message says which file to fix.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// `ORT_DYLIB_PATH` is unset and no `.easel/onnxruntime/libonnxruntime.so*` was found.
    #[error(
        "the ONNX Runtime shared library was not found (looked at $ORT_DYLIB_PATH and {searched}); \
         run `make setup`, or set ORT_DYLIB_PATH to the libonnxruntime.so.1.x file"
    )]
    NotFound {
        /// The places that were searched, for the message.
        searched: String,
    },
    /// The file exists (or was named) but could not be loaded, or is too old for this build.
    #[error("could not load ONNX Runtime from {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: ort::LoadDynamicError,
    },
    /// The library loaded but its environment could not be created.
    #[error("could not create the ONNX Runtime environment")]
    Environment(#[source] ort::Error),
    /// ONNX Runtime is process-wide and was already loaded from another file.
    #[error("ONNX Runtime is already loaded from {loaded} in this process; it cannot also be loaded from {requested}")]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },
}

/// A model folder could not be loaded. The message names the offending file and what was expected
/// of it, so that whoever exported the model can fix it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A required file is absent.
    #[error("{path} is missing: expected {expected}")]
    MissingFile { path: PathBuf, expected: &'static str },
    /// A file exists but could not be read.
    #[error("could not read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is malformed or has a field of the wrong type or an unknown value.
    #[error("{path} is not valid: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A file is well formed but describes something inconsistent or unusable.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// The model is valid but uses a feature this engine does not support yet.
    #[error("{path}: not supported yet: {message}")]
    Unsupported { path: PathBuf, message: String },
    /// The tokenizer files could not be turned into a tokenizer.
    #[error("could not build the CLIP tokenizer from {path}")]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// ONNX Runtime refused the graph (corrupt file, unsupported operator, out of memory...).
    #[error("ONNX Runtime could not load {path}")]
    Session {
        path: PathBuf,
        #[source]
        source: ort::Error,
    },
}

impl LoadError {
    pub(crate) fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        LoadError::Invalid { path: path.into(), message: message.into() }
    }

    pub(crate) fn unsupported(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        LoadError::Unsupported { path: path.into(), message: message.into() }
    }
}
