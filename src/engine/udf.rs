//! sluice's own SQL functions.

use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{ScalarUDF, Signature, Volatility};

/// `sluice_key_bucket(key)` over `n` buckets, as a function to call in a plan.
pub fn key_bucket(n: usize) -> ScalarUDF {
    ScalarUDF::new_from_impl(KeyBucket {
        n: n as u64,
        signature: Signature::any(1, Volatility::Immutable),
    })
}

/// The bucket count of a [`key_bucket`] function, or `None` for another function: what a
/// plan sent to another process carries to rebuild it.
pub fn key_buckets(udf: &ScalarUDF) -> Option<usize> {
    udf.inner()
        .downcast_ref::<KeyBucket>()
        .map(|k| k.n as usize)
}

/// `sluice_key_bucket(key)`: the bucket (0..n) of a key, by a hash that is the same in every
/// process, so that a resumed run's units hold the same keys. Integer keys hash as BIGINT and
/// text keys as VARCHAR, so `INT` and `BIGINT` (or `VARCHAR` and `VARCHAR VIEW`) keys of two
/// sources land in the same bucket.
#[derive(Debug, PartialEq, Eq, Hash)]
struct KeyBucket {
    n: u64,
    signature: datafusion::logical_expr::Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for KeyBucket {
    fn name(&self) -> &str {
        "sluice_key_bucket"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::UInt64)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        use datafusion::arrow::array::{Array, UInt64Array};
        use datafusion::arrow::compute::cast;
        let arrays = datafusion::logical_expr::ColumnarValue::values_to_arrays(&args.args)?;
        let key = &arrays[0];
        let common = match key.data_type() {
            t if t.is_integer() => DataType::Int64,
            DataType::Utf8View | DataType::LargeUtf8 | DataType::Dictionary(_, _) => DataType::Utf8,
            t => t.clone(),
        };
        let key = cast(key, &common)?;
        let mut hashes = vec![0u64; key.len()];
        let state = datafusion::common::hash_utils::RandomState::with_seed(0x51ce_b0c4);
        datafusion::common::hash_utils::create_hashes([&key], &state, &mut hashes)?;
        let buckets: UInt64Array = hashes.iter().map(|h| Some((h >> 16) % self.n)).collect();
        Ok(datafusion::logical_expr::ColumnarValue::Array(
            std::sync::Arc::new(buckets),
        ))
    }
}
