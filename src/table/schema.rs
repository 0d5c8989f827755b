//! Whether a write may add to an output: an `append`, or an `overwrite_partitions` that keeps
//! some of the output's files, must write the columns the output already has (its
//! `_MANIFEST` records them): the same names, in the same order, with the same types.
//!
//! No change is taken as an evolution, because none is read right by every reader of the
//! folder: a CSV file is read by position (a reordered, added or dropped column shifts the
//! values of every later one), DuckDB and pyarrow take the columns of one file for all
//! (an added column is dropped, or fails the read), and a column whose type changed fails
//! every Parquet reader at the first old file ("Cannot cast string 'x' to value of Int64
//! type"). A changed result is refused before anything is written; `overwrite` replaces the
//! output with the new columns.

use datafusion::arrow::datatypes::{DataType, Schema};

use super::manifest::{Manifest, ManifestColumn};
use crate::config::WriteMode;

/// Why a write of `new` (a result's columns, partition columns included) in `mode` may not
/// add to the output whose current version is `existing`: each column that changed, and the
/// output's columns. `None` when it may (same columns; no output yet; a mode that replaces
/// the whole output; a manifest from an early build that records no columns).
pub(crate) fn refuse_changed_columns(
    existing: Option<&Manifest>,
    mode: WriteMode,
    partition_by: &[String],
    new: &Schema,
) -> Option<String> {
    let keeps_files = match mode {
        WriteMode::Append => true,
        WriteMode::OverwritePartitions => !partition_by.is_empty(),
        WriteMode::Overwrite | WriteMode::ErrorIfExists => false,
    };
    let manifest = existing.filter(|_| keeps_files)?;
    if manifest.columns.is_empty() {
        return None;
    }
    let changes = column_changes(&manifest.columns, new);
    if changes.is_empty() {
        return None;
    }
    let columns = manifest
        .columns
        .iter()
        .map(|c| format!("{} {}", c.name, c.data_type))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "the result's columns differ from the output's ({columns}), so {} would mix files \
         that readers cannot read as one table: {}",
        match mode {
            WriteMode::Append => "appending it",
            _ => "overwriting some of its partitions",
        },
        changes.join("; ")
    ))
}

/// Each difference between an output's columns `old` and a result's `new`, in the output's
/// column order: a column missing or new, a column whose type changed, and, when the columns
/// both have are in another order, each one that moved.
pub(crate) fn column_changes(old: &[ManifestColumn], new: &Schema) -> Vec<String> {
    let mut changes = Vec::new();
    let new_index = |name: &str| new.fields().iter().position(|f| f.name() == name);
    for c in old {
        match new_index(&c.name) {
            None => changes.push(format!("column {} is missing", c.name)),
            Some(i) => {
                let t = new.field(i).data_type();
                if !same_type(&c.data_type, t) {
                    changes.push(format!("column {} was {}, now {t}", c.name, c.data_type));
                }
            }
        }
    }
    for f in new.fields() {
        if !old.iter().any(|c| c.name == *f.name()) {
            changes.push(format!("column {} is new", f.name()));
        }
    }
    // The columns both have, in each one's order: if these differ, say where each moved.
    let common_old: Vec<&str> = old
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| new_index(n).is_some())
        .collect();
    let common_new: Vec<&str> = new
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| old.iter().any(|c| c.name == *n))
        .collect();
    if common_old != common_new {
        for (i, c) in old.iter().enumerate() {
            if let Some(j) = new_index(&c.name)
                && i != j
            {
                changes.push(format!(
                    "column {} was {}, now {}",
                    c.name,
                    ordinal(i + 1),
                    ordinal(j + 1)
                ));
            }
        }
    }
    changes
}

/// Whether a column recorded as `old` (Arrow's display of its type) has type `new`. The
/// string types (`Utf8`, `LargeUtf8`, `Utf8View`) are one type to every file format and
/// reader, and so are the binary ones.
fn same_type(old: &str, new: &DataType) -> bool {
    fn family(t: &str) -> &str {
        match t {
            "Utf8" | "LargeUtf8" | "Utf8View" => "string",
            "Binary" | "LargeBinary" | "BinaryView" => "binary",
            other => other,
        }
    }
    family(old) == family(&new.to_string())
}

/// `1st`, `2nd`, `3rd`, `4th`, ... `11th`, `12th`, `13th`, `21st`.
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;

    fn old(cols: &[(&str, &str)]) -> Vec<ManifestColumn> {
        cols.iter()
            .map(|(n, t)| ManifestColumn {
                name: n.to_string(),
                data_type: t.to_string(),
            })
            .collect()
    }

    fn new(cols: &[(&str, DataType)]) -> Schema {
        Schema::new(
            cols.iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn changes_are_named_column_by_column() {
        let o = old(&[("id", "Int64"), ("name", "Utf8"), ("city", "Utf8")]);
        let same = new(&[
            ("id", DataType::Int64),
            ("name", DataType::Utf8View),
            ("city", DataType::LargeUtf8),
        ]);
        assert!(column_changes(&o, &same).is_empty());
        let moved = new(&[
            ("id", DataType::Int64),
            ("city", DataType::Utf8),
            ("name", DataType::Utf8),
        ]);
        assert_eq!(
            column_changes(&o, &moved),
            vec![
                "column name was 2nd, now 3rd",
                "column city was 3rd, now 2nd"
            ]
        );
        let typed = new(&[
            ("id", DataType::Utf8),
            ("name", DataType::Utf8),
            ("city", DataType::Utf8),
        ]);
        assert_eq!(
            column_changes(&o, &typed),
            vec!["column id was Int64, now Utf8"]
        );
        // A column dropped shifts the others, but their order is the same: only the drop.
        let dropped = new(&[("id", DataType::Int64), ("city", DataType::Utf8)]);
        assert_eq!(column_changes(&o, &dropped), vec!["column name is missing"]);
        let added = new(&[
            ("id", DataType::Int64),
            ("name", DataType::Utf8),
            ("city", DataType::Utf8),
            ("score", DataType::Int64),
        ]);
        assert_eq!(column_changes(&o, &added), vec!["column score is new"]);
    }

    #[test]
    fn only_writes_that_keep_files_are_checked() {
        let mut m = Manifest::new("r", "csv", &[], old(&[("id", "Int64")]), Vec::new());
        let other = new(&[("id", DataType::Utf8)]);
        assert!(refuse_changed_columns(Some(&m), WriteMode::Append, &[], &other).is_some());
        assert!(refuse_changed_columns(Some(&m), WriteMode::Overwrite, &[], &other).is_none());
        // Unpartitioned, overwrite_partitions replaces everything.
        assert!(
            refuse_changed_columns(Some(&m), WriteMode::OverwritePartitions, &[], &other).is_none()
        );
        assert!(
            refuse_changed_columns(
                Some(&m),
                WriteMode::OverwritePartitions,
                &["id".to_string()],
                &other
            )
            .is_some()
        );
        assert!(refuse_changed_columns(None, WriteMode::Append, &[], &other).is_none());
        m.columns.clear();
        assert!(refuse_changed_columns(Some(&m), WriteMode::Append, &[], &other).is_none());
    }

    #[test]
    fn ordinals() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
            .into_iter()
            .map(ordinal)
            .collect();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
                "111th"
            ]
        );
    }
}
