//! The `easel` command's library half: the local server composition, shared with the tests.
pub mod local;
pub mod runtime;
