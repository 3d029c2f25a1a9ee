//! chrony.conf, read as ntpxd understands it.
//!
//! Every directive of chrony 4.3 is recognised. Those ntpxd implements are parsed and checked;
//! the others are accepted with a warning naming the file and line, so that an existing
//! chrony.conf works. An unknown word or a bad value is an error with file and line, and nothing
//! of the file is applied. New directives of ntpxd use the same syntax (`xdp IFACE [MODE]`).

mod include;
mod model;
mod parse;
mod print;
mod reload;
mod resolve;
#[cfg(test)]
mod tests;
mod values;

pub use model::*;
pub use parse::{load, parse};
pub use reload::reloadable;
pub use values::parse_subnet;

/// The core's types the configuration names.
pub use crate::{client_log::RateLimitConfig, control::AttachMode, reference::LocalReference};
