//! The command line, parsed in two stages as ripgrep does: [`args`] is what clap reads from
//! argv, each value typed; [`options`] checks and turns those into the library's options.

pub mod args;
pub mod options;
pub mod setup;
