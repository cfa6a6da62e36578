//! Where the ONNX graphs run: ONNX Runtime's CPU provider, or its CUDA provider on one GPU.
//!
//! The CUDA provider needs an ONNX Runtime built with it (PyPI `onnxruntime-gpu`, with CUDA and
//! cuDNN libraries beside it). Asking for it from a library without it fails at load with a
//! message that says so: a GPU host never silently falls back to its CPUs.

use std::fmt;
use std::str::FromStr;

/// The execution device of a [`crate::Pipeline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// The CUDA execution provider on GPU `device_id`.
    Cuda { device_id: i32 },
}

impl FromStr for Device {
    type Err = String;

    /// `cpu`, `cuda` (GPU 0) or `cuda:N`.
    fn from_str(text: &str) -> Result<Device, String> {
        let bad = || format!("{text:?} is not a device: use cpu, cuda or cuda:N");
        match text.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda { device_id: 0 }),
            other => {
                let id = other.strip_prefix("cuda:").ok_or_else(bad)?;
                let device_id: i32 = id.parse().map_err(|_| bad())?;
                if device_id < 0 {
                    return Err(bad());
                }
                Ok(Device::Cuda { device_id })
            }
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda { device_id } => write!(f, "cuda:{device_id}"),
        }
    }
}

impl Device {
    /// The execution providers to register on a session: none for the CPU (ONNX Runtime's
    /// default), CUDA with failure reported rather than a silent fallback.
    pub(crate) fn execution_providers(self) -> Vec<ort::ep::ExecutionProviderDispatch> {
        match self {
            Device::Cpu => Vec::new(),
            Device::Cuda { device_id } => {
                vec![ort::ep::CUDA::default().with_device_id(device_id).build().error_on_failure()]
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_from_their_names_and_print_back() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("CUDA".parse::<Device>().unwrap(), Device::Cuda { device_id: 0 });
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda { device_id: 3 });
        assert_eq!(Device::Cuda { device_id: 3 }.to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", ""] {
            assert!(bad.parse::<Device>().unwrap_err().contains("cpu, cuda or cuda:N"), "{bad}");
        }
    }
}
