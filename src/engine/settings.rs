//! The user's engine settings (`--set KEY=VALUE`, `[settings.options]`): DataFusion's
//! configuration options, and sluice's rewrites turned off or on by name.

use datafusion::common::config::ConfigOptions;
use datafusion::prelude::SessionConfig;

use super::EngineError;
use crate::rewrite::Switches;

/// DataFusion's options that a setting of sluice's decides, with that setting: set here,
/// they would part sluice's view of the session from DataFusion's (the sort reservations
/// are sized from `threads`, the grace join from `join_strategy`).
const SLUICES_OWN: &[(&str, &str)] = &[
    (
        "datafusion.execution.target_partitions",
        "threads (--threads)",
    ),
    (
        "datafusion.optimizer.prefer_hash_join",
        "join_strategy (--join-strategy)",
    ),
    (
        "datafusion.optimizer.hash_join_single_partition_threshold",
        "broadcast_join_limit",
    ),
    (
        "datafusion.optimizer.hash_join_single_partition_threshold_rows",
        "broadcast_join_limit",
    ),
];

/// DataFusion's options for its own writers (`COPY`, `INSERT`) that its option list does not
/// mark "(writing)": sluice's sinks do not read them.
const WRITERS: &[&str] = &[
    "datafusion.execution.minimum_parallel_output_files",
    "datafusion.execution.soft_max_rows_per_output_file",
    "datafusion.execution.max_buffered_batches_per_output_file",
    "datafusion.execution.keep_partition_by_columns",
];

/// `settings` applied to `config` in order (a later one wins), and the rewrites they leave
/// on. A `sluice.NAME` key turns a rewrite off or on; any other is DataFusion's.
pub(super) fn apply(
    config: &mut SessionConfig,
    settings: &[(String, String)],
) -> Result<Switches, EngineError> {
    let mut switches = Switches::default();
    for (key, value) in settings {
        let refused = |message: String| EngineError::Setting {
            key: key.clone(),
            value: value.clone(),
            message,
        };
        let value = value.trim();
        match key.strip_prefix("sluice.") {
            Some(name) => {
                let on = value
                    .parse::<bool>()
                    .map_err(|_| refused("expected true or false".into()))?;
                switches.set(name, on).map_err(refused)?;
            }
            None => {
                if let Some(why) = not_honoured(key, config.options()) {
                    return Err(refused(why));
                }
                config
                    .options_mut()
                    .set(key, value)
                    .map_err(|e| refused(e.strip_backtrace()))?;
            }
        }
    }
    Ok(switches)
}

/// Whether every one of `settings` can be set: for a command that starts its engines later
/// (`sluice schedule`), so that a bad setting stops it at once.
pub fn check(settings: &[(String, String)]) -> Result<(), EngineError> {
    apply(&mut SessionConfig::new(), settings).map(|_| ())
}

/// Why DataFusion's option `key` is refused, if it is: one sluice decides by a setting of
/// its own, one of the runtime sluice builds, or one of DataFusion's writers, which sluice's
/// sinks are not (they would be accepted and do nothing).
fn not_honoured(key: &str, options: &ConfigOptions) -> Option<String> {
    if let Some((_, own)) = SLUICES_OWN.iter().find(|(k, _)| *k == key) {
        return Some(format!("sluice sets it from {own}: set that instead"));
    }
    if key.starts_with("datafusion.runtime.") {
        return Some(
            "sluice builds the runtime itself: memory_limit and spill_dir set it".to_string(),
        );
    }
    let writing = options
        .entries()
        .iter()
        .any(|e| e.key == key && e.description.trim_start().starts_with("(writing)"));
    if writing || WRITERS.contains(&key) {
        return Some(
            "an option of DataFusion's own writers, which sluice's sinks are not: set \
             compression, target_file_size or target_rows_per_file on the sink"
                .to_string(),
        );
    }
    None
}
