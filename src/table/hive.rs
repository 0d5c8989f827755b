//! Hive-style partition folders (`key=value/`) as sluice writes and reads them: how a value
//! is encoded into a folder name, and the folder that stands for NULL.

/// The folder name Hive and Spark use for a NULL partition value.
pub(crate) const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// The path segment `col=value` in object_store's path form. A `/` in the value is written as
/// `%2F` (it cannot be part of a folder name); object_store then encodes the segment the same
/// way for every backend (`%`, non-ASCII, `*`... percent-encoded), and readers that decode
/// partition values once (DataFusion, and sluice through it) read the value back exactly,
/// except that a `/` reads back as `%2F`.
pub(crate) fn segment(col: &str, value: &str) -> String {
    let part = format!("{col}={}", value.replace('/', "%2F"));
    object_store::path::PathPart::from(part.as_str())
        .as_ref()
        .to_string()
}

/// The relative folder of one partition, e.g. `order_date=2024-01-01/region=EU`, from the
/// column names and the values; `None` (and the empty string) is Hive's NULL folder.
pub(crate) fn partition_path(cols: &[String], values: &[Option<String>]) -> String {
    cols.iter()
        .zip(values)
        .map(|(c, v)| match v {
            Some(v) if !v.is_empty() => segment(c, v),
            _ => segment(c, NULL_PARTITION),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The Hive partition values of the file at `path` (its `key=value` folders under
/// `table_url`), typed; or why there are none.
pub(crate) fn partition_values(
    table_url: &datafusion::datasource::listing::ListingTableUrl,
    cols: &[(String, datafusion::arrow::datatypes::DataType)],
    path: &object_store::path::Path,
) -> Result<Vec<datafusion::common::ScalarValue>, String> {
    use datafusion::common::ScalarValue;
    use datafusion::datasource::listing::helpers::parse_partitions_for_path;
    if cols.is_empty() {
        return Ok(Vec::new());
    }
    let names = cols.iter().map(|(n, _)| n.as_str());
    let Some(values) = parse_partitions_for_path(table_url, path, names) else {
        let wanted: Vec<String> = cols.iter().map(|(n, _)| format!("{n}=...")).collect();
        return Err(format!(
            "the file is not under partition folders {}",
            wanted.join("/")
        ));
    };
    values
        .into_iter()
        .zip(cols)
        .map(|(value, (name, ty))| {
            if value == NULL_PARTITION {
                return ScalarValue::try_from(ty).map_err(|e| e.to_string());
            }
            ScalarValue::try_from_string(value.to_string(), ty)
                .map_err(|_| format!("partition value {name}={value:?} is not {ty}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_in_object_store_path_form() {
        assert_eq!(segment("d", "2024-01-01"), "d=2024-01-01");
        assert_eq!(segment("r", "EU/UK"), "r=EU%252FUK");
        assert_eq!(segment("c", "München"), "c=M%C3%BCnchen");
        assert_eq!(segment("t", "a b:c"), "t=a b:c");
        assert_eq!(
            partition_path(&["a".into(), "b".into()], &[Some("x".into()), None]),
            format!("a=x/b={NULL_PARTITION}")
        );
    }
}
