//! The commands of the `latent-line` binary (SPEC §13); `src/main.rs`
//! parses the command line and picks one.

pub(crate) mod checks;
pub(crate) mod devices;
pub(crate) mod runlog;
pub(crate) mod scan;
pub(crate) mod train;
