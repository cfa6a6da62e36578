//! The three ONNX graphs of txt2img, each behind a mutex (`Session::run` takes `&mut self`), with
//! their input contracts read from the graphs themselves.
//!
//! Exporters disagree on input types (`shared/reference/inference-engine.md` §1.3): `input_ids`
//! is int32 (diffusers' script) or int64 (optimum); `timestep` is int64 `[B]` (optimum < 1.24),
//! float `[B]` (diffusers' script) or a float scalar (optimum ≥ 1.24). Every input is therefore
//! built in the element type and rank the session declares. Outputs are found by name, falling
//! back to the first output. Half-precision graphs are refused for now (they need `half` I/O).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use easel_core::generator::GenerateError;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::{Outlet, TensorElementType, TensorRef, ValueType};

use crate::device::Device;
use crate::error::LoadError;
use crate::runtime::OrtRuntime;

/// Session settings shared by the three graphs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionSettings {
    pub intra_threads: usize,
    pub device: Device,
}

/// An integer element type an input may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntType {
    I32,
    I64,
}

/// The element type of the UNet's `timestep` input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimestepType {
    Float,
    Int(IntType),
}

/// The shape of the UNet's `timestep` input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimestepShape {
    /// Rank 0 (optimum ≥ 1.24).
    Scalar,
    /// `[1]`, a fixed single element broadcast over the batch.
    One,
    /// `[B]`, one per batch row.
    PerRow,
}

/// One loaded graph: the session, run options selecting the one output we read, and names.
#[derive(Debug)]
pub(crate) struct Graph {
    path: PathBuf,
    output: String,
    slot: Mutex<Slot>,
}

struct Slot {
    session: Session,
    options: RunOptions<HasSelectedOutputs>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("session", &self.session).finish_non_exhaustive()
    }
}

impl Graph {
    pub(crate) fn open(runtime: &OrtRuntime, path: &Path, settings: SessionSettings) -> Result<Session, LoadError> {
        let session_error = |source: ort::Error| LoadError::Session { path: path.to_path_buf(), source };
        Session::builder(runtime.environment())
            .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3).map_err(Into::into))
            .and_then(|b| b.with_intra_threads(settings.intra_threads).map_err(Into::into))
            .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
            .and_then(|b| b.with_execution_providers(settings.device.execution_providers()).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(path))
            .map_err(session_error)
    }

    pub(crate) fn new(session: Session, path: &Path, output: String) -> Result<Graph, LoadError> {
        let options = RunOptions::new()
            .map_err(|source| LoadError::Session { path: path.to_path_buf(), source })?
            .with_outputs(OutputSelector::no_default().with(output.clone()));
        Ok(Graph { path: path.to_path_buf(), output, slot: Mutex::new(Slot { session, options }) })
    }

    /// Runs the graph and hands its selected float32 output (shape, data) to `read`.
    pub(crate) fn run<R>(
        &self,
        inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)>,
        read: impl FnOnce(&[i64], &[f32]) -> Result<R, GenerateError>,
    ) -> Result<R, GenerateError> {
        let what = || format!("running {}", self.path.display());
        // A panic elsewhere cannot leave a session half-updated: keep using it after poisoning.
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let Slot { session, options } = &mut *slot;
        let outputs = session.run_with_options(inputs, options).map_err(|e| GenerateError::engine(what(), e))?;
        let value = outputs
            .get(&self.output)
            .ok_or_else(|| engine_message(format!("{} returned no output {:?}", self.path.display(), self.output)))?;
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| GenerateError::engine(what(), e))?;
        read(shape, data)
    }

    /// Fails unless `shape` is `expected`, naming the graph.
    fn expect_shape(&self, shape: &[i64], expected: &[usize]) -> Result<(), GenerateError> {
        if shape.len() == expected.len() && shape.iter().zip(expected).all(|(&a, &b)| usize::try_from(a) == Ok(b)) {
            Ok(())
        } else {
            Err(self.shape_error(shape, &format!("{expected:?}")))
        }
    }

    fn shape_error(&self, shape: &[i64], expected: &str) -> GenerateError {
        engine_message(format!(
            "{} output {:?} has shape {shape:?}; expected {expected}",
            self.path.display(),
            self.output
        ))
    }
}

/// `text_encoder/model.onnx`: token ids → per-token hidden states.
#[derive(Debug)]
pub(crate) struct TextEncoder {
    graph: Graph,
    input: String,
    ids: IntType,
    /// The hidden size when the graph fixes it.
    pub hidden_size: Option<usize>,
}

impl TextEncoder {
    pub fn load(
        runtime: &OrtRuntime,
        path: &Path,
        seq_len: usize,
        settings: SessionSettings,
    ) -> Result<Self, LoadError> {
        let session = Graph::open(runtime, path, settings)?;
        let input = single_input(&session, "input_ids", path)?;
        let (ty, shape) = tensor_type(input, path)?;
        let ids = match ty {
            TensorElementType::Int64 => IntType::I64,
            TensorElementType::Int32 => IntType::I32,
            other => return Err(LoadError::unsupported(path, format!("input {:?} of type {other}", input.name()))),
        };
        expect_rank(input, shape, 2, path)?;
        if let Some(fixed) = fixed_dim(shape, 1)
            && fixed != seq_len
        {
            return Err(LoadError::invalid(
                path,
                format!("input {:?} has {fixed} positions but the tokenizer makes {seq_len}", input.name()),
            ));
        }
        let input = input.name().to_owned();
        let output = float_output(&session, "last_hidden_state", 3, path)?;
        let hidden_size = fixed_dim(output.1, 2);
        let output = output.0;
        Ok(TextEncoder { graph: Graph::new(session, path, output)?, input, ids, hidden_size })
    }

    /// Encodes `ids` (`batch` rows of `seq_len`) into `[batch, seq_len, hidden]` states, row-major;
    /// returns them with `hidden`.
    pub fn encode(&self, ids: &[u32], batch: usize, seq_len: usize) -> Result<(Vec<f32>, usize), GenerateError> {
        let shape = [batch, seq_len];
        let input_error = |e| GenerateError::engine("building the text encoder input", e);
        // Token ids are < 2³¹ (vocabularies are ~50k), so the i32 conversion cannot wrap.
        let (wide, narrow): (Vec<i64>, Vec<i32>) = match self.ids {
            IntType::I64 => (ids.iter().map(|&id| i64::from(id)).collect(), Vec::new()),
            IntType::I32 => (Vec::new(), ids.iter().map(|&id| id as i32).collect()),
        };
        let value: SessionInputValue<'_> = match self.ids {
            IntType::I64 => TensorRef::from_array_view((shape, &wide[..])).map_err(input_error)?.into(),
            IntType::I32 => TensorRef::from_array_view((shape, &narrow[..])).map_err(input_error)?.into(),
        };
        self.graph.run(vec![(Cow::from(self.input.as_str()), value)], |shape, data| {
            let hidden = match *shape {
                [b, s, h] if usize::try_from(b) == Ok(batch) && usize::try_from(s) == Ok(seq_len) && h > 0 => h,
                _ => return Err(self.graph.shape_error(shape, "[batch, sequence, hidden]")),
            };
            Ok((data.to_vec(), hidden as usize))
        })
    }
}

/// `unet/model.onnx`: (noisy latents, timestep, text states) → noise (or v / x₀) prediction.
#[derive(Debug)]
pub(crate) struct Unet {
    graph: Graph,
    sample: String,
    timestep: String,
    encoder_hidden_states: String,
    pub timestep_type: TimestepType,
    pub timestep_shape: TimestepShape,
    /// The text-state width the graph fixes, if it does.
    pub hidden_size: Option<usize>,
}

/// The UNet's inputs for one call, borrowed from the pipeline's buffers.
#[derive(Debug)]
pub(crate) struct UnetInputs<'a> {
    /// `[rows, channels, h, w]`.
    pub sample: &'a [f32],
    pub sample_shape: [usize; 4],
    /// The exact (possibly fractional) timestep; rounded here for integer graphs.
    pub timestep: f32,
    /// `[rows, seq_len, hidden]`.
    pub encoder_hidden_states: &'a [f32],
    pub states_shape: [usize; 3],
}

impl Unet {
    pub fn load(
        runtime: &OrtRuntime,
        path: &Path,
        channels: usize,
        settings: SessionSettings,
    ) -> Result<Self, LoadError> {
        let session = Graph::open(runtime, path, settings)?;
        let names = ["sample", "timestep", "encoder_hidden_states"];
        if let Some(extra) = session.inputs().iter().find(|i| !names.contains(&i.name())) {
            return Err(LoadError::unsupported(
                path,
                format!("UNet input {:?} (SDXL, LCM and ControlNet UNets take extra inputs)", extra.name()),
            ));
        }
        let find = |name: &str| {
            session.inputs().iter().find(|i| i.name() == name).ok_or_else(|| {
                let found: Vec<&str> = session.inputs().iter().map(Outlet::name).collect();
                LoadError::invalid(path, format!("the UNet has no input {name:?} (inputs: {found:?})"))
            })
        };
        let sample = find("sample")?;
        let (ty, shape) = tensor_type(sample, path)?;
        expect_float(sample, ty, path)?;
        expect_rank(sample, shape, 4, path)?;
        if let Some(fixed) = fixed_dim(shape, 1)
            && fixed != channels
        {
            return Err(LoadError::invalid(
                path,
                format!("input \"sample\" has {fixed} channels; expected {channels}"),
            ));
        }

        let states = find("encoder_hidden_states")?;
        let (ty, shape) = tensor_type(states, path)?;
        expect_float(states, ty, path)?;
        expect_rank(states, shape, 3, path)?;
        let hidden_size = fixed_dim(shape, 2);

        let timestep = find("timestep")?;
        let (ty, shape) = tensor_type(timestep, path)?;
        let timestep_type = match ty {
            TensorElementType::Float32 => TimestepType::Float,
            TensorElementType::Int64 => TimestepType::Int(IntType::I64),
            TensorElementType::Int32 => TimestepType::Int(IntType::I32),
            TensorElementType::Float16 => return Err(fp16(timestep, path)),
            other => return Err(LoadError::unsupported(path, format!("a \"timestep\" input of type {other}"))),
        };
        let timestep_shape = match shape {
            [] => TimestepShape::Scalar,
            [1] => TimestepShape::One,
            [_] => TimestepShape::PerRow,
            _ => return Err(LoadError::unsupported(path, format!("a \"timestep\" input of shape {shape:?}"))),
        };

        let output = float_output(&session, "out_sample", 4, path)?.0;
        let [sample, timestep, encoder_hidden_states] = names.map(str::to_owned);
        Ok(Unet {
            graph: Graph::new(session, path, output)?,
            sample,
            timestep,
            encoder_hidden_states,
            timestep_type,
            timestep_shape,
            hidden_size,
        })
    }

    /// One UNet evaluation; the prediction (same shape as the sample) is copied into `out`.
    pub fn predict(&self, inputs: &UnetInputs<'_>, out: &mut [f32]) -> Result<(), GenerateError> {
        let input_error = |e| GenerateError::engine("building the UNet input", e);
        let rows = inputs.sample_shape[0];
        let count = match self.timestep_shape {
            TimestepShape::Scalar | TimestepShape::One => 1,
            TimestepShape::PerRow => rows,
        };
        let t_shape: &[usize] = match self.timestep_shape {
            TimestepShape::Scalar => &[],
            TimestepShape::One | TimestepShape::PerRow => std::slice::from_ref(&count),
        };
        // Integer graphs get the nearest integer; the pipeline warns when that changes the value.
        let rounded = f64::from(inputs.timestep).round();
        let (floats, longs, ints) = match self.timestep_type {
            TimestepType::Float => (vec![inputs.timestep; count], Vec::new(), Vec::new()),
            TimestepType::Int(IntType::I64) => (Vec::new(), vec![rounded as i64; count], Vec::new()),
            TimestepType::Int(IntType::I32) => (Vec::new(), Vec::new(), vec![rounded as i32; count]),
        };
        let timestep: SessionInputValue<'_> = match self.timestep_type {
            TimestepType::Float => TensorRef::from_array_view((t_shape, &floats[..])).map_err(input_error)?.into(),
            TimestepType::Int(IntType::I64) => {
                TensorRef::from_array_view((t_shape, &longs[..])).map_err(input_error)?.into()
            }
            TimestepType::Int(IntType::I32) => {
                TensorRef::from_array_view((t_shape, &ints[..])).map_err(input_error)?.into()
            }
        };
        let sample = TensorRef::from_array_view((inputs.sample_shape, inputs.sample)).map_err(input_error)?;
        let states =
            TensorRef::from_array_view((inputs.states_shape, inputs.encoder_hidden_states)).map_err(input_error)?;
        let feed = vec![
            (Cow::from(self.sample.as_str()), sample.into()),
            (Cow::from(self.timestep.as_str()), timestep),
            (Cow::from(self.encoder_hidden_states.as_str()), states.into()),
        ];
        self.graph.run(feed, |shape, data| {
            self.graph.expect_shape(shape, &inputs.sample_shape)?;
            out.copy_from_slice(data);
            Ok(())
        })
    }
}

/// `vae_decoder/model.onnx`: scaled latents → image in [−1, 1], NCHW.
#[derive(Debug)]
pub(crate) struct VaeDecoder {
    graph: Graph,
    input: String,
}

impl VaeDecoder {
    pub fn load(
        runtime: &OrtRuntime,
        path: &Path,
        channels: usize,
        settings: SessionSettings,
    ) -> Result<Self, LoadError> {
        let (session, input, input_channels) = open_nchw_graph(runtime, path, "latent_sample", settings)?;
        if let Some(fixed) = input_channels
            && fixed != channels
        {
            return Err(LoadError::invalid(path, format!("{input:?} has {fixed} channels; expected {channels}")));
        }
        let output = float_output(&session, "sample", 4, path)?.0;
        Ok(VaeDecoder { graph: Graph::new(session, path, output)?, input })
    }

    /// Decodes `[1, C, h, w]` latents and hands the `[1, 3, H, W]` image to `read` without copying.
    pub fn decode<R>(
        &self,
        latents: &[f32],
        shape: [usize; 4],
        image_shape: [usize; 4],
        read: impl FnOnce(&[f32]) -> R,
    ) -> Result<R, GenerateError> {
        let value = TensorRef::from_array_view((shape, latents))
            .map_err(|e| GenerateError::engine("building the VAE decoder input", e))?;
        self.graph.run(vec![(Cow::from(self.input.as_str()), value.into())], |out_shape, data| {
            self.graph.expect_shape(out_shape, &image_shape)?;
            Ok(read(data))
        })
    }
}

/// What `vae_encoder/model.onnx` returns (the exporters differ, see the reference §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EncoderOutput {
    /// `latent_parameters` `[B, 2C, h, w]`: mean ‖ log-variance (optimum ≥ 1.23); the host samples.
    Parameters,
    /// `latent_sample` `[B, C, h, w]`: already sampled inside the graph (older exports).
    Sample,
}

/// `vae_encoder/model.onnx`: image in [−1, 1], NCHW → latent distribution (img2img).
#[derive(Debug)]
pub(crate) struct VaeEncoder {
    graph: Graph,
    input: String,
    pub output: EncoderOutput,
    channels: usize,
}

impl VaeEncoder {
    pub fn load(
        runtime: &OrtRuntime,
        path: &Path,
        channels: usize,
        settings: SessionSettings,
    ) -> Result<Self, LoadError> {
        let (session, input, _) = open_nchw_graph(runtime, path, "sample", settings)?;
        let named = |name: &str| session.outputs().iter().any(|o| o.name() == name);
        let (output_name, fixed) = if named("latent_parameters") || !named("latent_sample") {
            let (name, shape) = float_output(&session, "latent_parameters", 4, path)?;
            (name, fixed_dim(shape, 1))
        } else {
            let (name, shape) = float_output(&session, "latent_sample", 4, path)?;
            (name, fixed_dim(shape, 1))
        };
        let output = match fixed {
            Some(c) if c == 2 * channels => EncoderOutput::Parameters,
            Some(c) if c == channels => EncoderOutput::Sample,
            Some(c) => {
                return Err(LoadError::invalid(
                    path,
                    format!(
                        "{output_name:?} has {c} channels; expected {channels} (a sample) or {} (mean and log-variance)",
                        2 * channels
                    ),
                ));
            }
            None if output_name == "latent_sample" => EncoderOutput::Sample,
            None => EncoderOutput::Parameters,
        };
        Ok(VaeEncoder { graph: Graph::new(session, path, output_name)?, input, output, channels })
    }

    /// Encodes one `[1, 3, H, W]` image; returns the flat output (`[1, 2C, h, w]` or `[1, C, h, w]`).
    pub fn encode(&self, image: &[f32], shape: [usize; 4], latent_hw: [usize; 2]) -> Result<Vec<f32>, GenerateError> {
        let value = TensorRef::from_array_view((shape, image))
            .map_err(|e| GenerateError::engine("building the VAE encoder input", e))?;
        let channels = match self.output {
            EncoderOutput::Parameters => 2 * self.channels,
            EncoderOutput::Sample => self.channels,
        };
        self.graph.run(vec![(Cow::from(self.input.as_str()), value.into())], |out_shape, data| {
            self.graph.expect_shape(out_shape, &[1, channels, latent_hw[0], latent_hw[1]])?;
            Ok(data.to_vec())
        })
    }
}

/// Opens a graph whose one input (`name`, or the only one) is a float32 NCHW tensor; returns the
/// session, the input's name and its channel count when the graph fixes it.
pub(crate) fn open_nchw_graph(
    runtime: &OrtRuntime,
    path: &Path,
    name: &str,
    settings: SessionSettings,
) -> Result<(Session, String, Option<usize>), LoadError> {
    let session = Graph::open(runtime, path, settings)?;
    let input = single_input(&session, name, path)?;
    let (ty, shape) = tensor_type(input, path)?;
    expect_float(input, ty, path)?;
    expect_rank(input, shape, 4, path)?;
    let (input, channels) = (input.name().to_owned(), fixed_dim(shape, 1));
    Ok((session, input, channels))
}

fn engine_message(message: String) -> GenerateError {
    GenerateError::Engine { message, source: None }
}

/// The input called `name`, or the graph's only input whatever its name.
fn single_input<'s>(session: &'s Session, name: &str, path: &Path) -> Result<&'s Outlet, LoadError> {
    let inputs = session.inputs();
    if let Some(input) = inputs.iter().find(|i| i.name() == name) {
        if let Some(extra) = inputs.iter().find(|i| i.name() != name) {
            return Err(LoadError::unsupported(path, format!("the extra input {:?}", extra.name())));
        }
        return Ok(input);
    }
    match inputs {
        [only] => Ok(only),
        _ => {
            let found: Vec<&str> = inputs.iter().map(Outlet::name).collect();
            Err(LoadError::invalid(path, format!("expected one input {name:?}; the graph has {found:?}")))
        }
    }
}

/// The output called `name` or else the first one; it must be a float32 tensor of `rank`.
pub(crate) fn float_output<'s>(
    session: &'s Session,
    name: &str,
    rank: usize,
    path: &Path,
) -> Result<(String, &'s [i64]), LoadError> {
    let output = session
        .outputs()
        .iter()
        .find(|o| o.name() == name)
        .or_else(|| session.outputs().first())
        .ok_or_else(|| LoadError::invalid(path, "the graph has no outputs"))?;
    let (ty, shape) = tensor_type(output, path)?;
    expect_float(output, ty, path)?;
    expect_rank(output, shape, rank, path)?;
    Ok((output.name().to_owned(), shape))
}

fn tensor_type<'s>(outlet: &'s Outlet, path: &Path) -> Result<(TensorElementType, &'s [i64]), LoadError> {
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => Ok((*ty, &shape[..])),
        other => Err(LoadError::unsupported(path, format!("{:?} is a {other:?}, not a tensor", outlet.name()))),
    }
}

fn expect_float(outlet: &Outlet, ty: TensorElementType, path: &Path) -> Result<(), LoadError> {
    match ty {
        TensorElementType::Float32 => Ok(()),
        TensorElementType::Float16 => Err(fp16(outlet, path)),
        other => Err(LoadError::invalid(path, format!("{:?} has type {other}; expected float32", outlet.name()))),
    }
}

fn fp16(outlet: &Outlet, path: &Path) -> LoadError {
    LoadError::unsupported(
        path,
        format!("float16 inputs/outputs ({:?} is float16); export the model with float32 I/O", outlet.name()),
    )
}

fn expect_rank(outlet: &Outlet, shape: &[i64], rank: usize, path: &Path) -> Result<(), LoadError> {
    if shape.len() == rank {
        Ok(())
    } else {
        Err(LoadError::invalid(path, format!("{:?} has shape {shape:?}; expected rank {rank}", outlet.name())))
    }
}

/// The size of dimension `axis` when the graph fixes it (dynamic dimensions are −1).
pub(crate) fn fixed_dim(shape: &[i64], axis: usize) -> Option<usize> {
    shape.get(axis).and_then(|&d| usize::try_from(d).ok())
}
