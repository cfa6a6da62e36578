//! easel-core: the domain of easel, free of I/O. Adapters implement its ports; the api crate and
//! the function binaries compose them.
//!
//! - [`request`]: the dialect-neutral [`request::GenerationRequest`] every dialect parses into.
//! - [`task`]: the [`task::Task`] record and its state machine.
//! - [`ports`]: storage and queue traits; [`generator`]: the diffusion engine trait.
//! - [`submit`], [`worker`] and [`notify`]: the use cases; [`usage`]: metering and credits.
pub mod egress;
pub mod generator;
pub mod keys;
pub mod moderation;
pub mod notify;
pub mod png;
pub mod ports;
pub mod presets;
pub mod prompt_policy;
pub mod request;
pub mod submit;
pub mod task;
pub mod usage;
pub mod webhook;
pub mod worker;
