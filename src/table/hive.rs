//! Hive-style partition folders (`key=value/`) as sluice writes and reads them: how a value
//! is escaped into a folder name (as Hive and Spark do), and the folder that stands for NULL.

/// The folder name Hive and Spark use for a NULL partition value.
pub(crate) const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Whether Hive escapes `c` in a partition folder name (Hive's `FileUtils.escapePathName`,
/// which Spark's `ExternalCatalogUtils.escapePathName` copies): the ASCII control
/// characters, `"`, `#`, `%`, `'`, `*`, `/`, `:`, `=`, `?`, `\`, DEL, `{`, `[`, `]` and `^`.
/// (Hive leaves NUL alone; it cannot be in a file name, so sluice escapes it too.)
fn hive_escapes(c: char) -> bool {
    c.is_ascii_control()
        || matches!(
            c,
            '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^'
        )
}

/// The first character of `s` that Hive escapes in folder names, if any.
pub(crate) fn escaped_char(s: &str) -> Option<char> {
    s.chars().find(|&c| hive_escapes(c))
}

/// `s` as Hive writes it in a folder name: each character [`hive_escapes`] as `%XX`
/// (uppercase hex), every other character as it is (spaces and non-ASCII included).
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if hive_escapes(c) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The folder name `col=value`, both escaped as Hive does ([`escape`]), and a value that is
/// `null` in any case with its first letter escaped too (`%6Eull`): DuckDB reads a folder
/// `p=null` as NULL, and decodes `%XX` after that test. That name is the
/// object key's segment as it is on every store (a folder name on local disk, a key segment
/// on S3), since an escaped name holds no `/` nor control character. Readers that decode
/// `%XX` in partition values (DataFusion and so sluice, DuckDB, pyarrow, Spark, Hive) read
/// the value back exactly.
pub(crate) fn segment(col: &str, value: &str) -> String {
    if value.eq_ignore_ascii_case("null") {
        let (first, rest) = value.split_at(1);
        return format!("{}=%{:02X}{rest}", escape(col), first.as_bytes()[0]);
    }
    format!("{}={}", escape(col), escape(value))
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
/// The partition a folder path stands for, however a build of sluice spelled it: each
/// segment `%XX`-decoded once. Builds before Hive's escaping wrote `p=a=b` and
/// `c=M%C3%BCnchen` where this one writes `p=a%3Db` and `c=München`; both give one key (a
/// `/` in a value excepted, written `%252F` before and `%2F` now).
pub(crate) fn partition_key(folder: &str) -> String {
    folder
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect::<Vec<_>>()
        .join("/")
}

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
    fn segments_are_escaped_as_hive_does() {
        assert_eq!(segment("d", "2024-01-01"), "d=2024-01-01");
        assert_eq!(segment("p", "a=b"), "p=a%3Db");
        assert_eq!(segment("r", "EU/UK"), "r=EU%2FUK");
        assert_eq!(segment("c", "München"), "c=München");
        assert_eq!(segment("t", "a b:c"), "t=a b%3Ac");
        assert_eq!(segment("x", "50%"), "x=50%25");
        assert_eq!(segment("x", "%3D"), "x=%253D");
        assert_eq!(segment("x", "\"\t\n\u{7f}"), "x=%22%09%0A%7F");
        assert_eq!(segment("x", "#'*?\\{[]^"), "x=%23%27%2A%3F%5C%7B%5B%5D%5E");
        // Hive leaves these alone (object_store's own encoding would not).
        assert_eq!(segment("x", "<>|~`}"), "x=<>|~`}");
        assert_eq!(segment("x", "null"), "x=%6Eull");
        assert_eq!(segment("x", "NuLL"), "x=%4EuLL");
        assert_eq!(segment("x", "nullx"), "x=nullx");
        assert_eq!(escaped_char("a_b"), None);
        assert_eq!(escaped_char("a:b"), Some(':'));
        assert_eq!(
            partition_path(&["a".into(), "b".into()], &[Some("x".into()), None]),
            format!("a=x/b={NULL_PARTITION}")
        );
    }

    /// Every escaped segment is a valid object_store path part as it is, so the key on the
    /// store is exactly the escaped name.
    #[test]
    fn escaped_segments_are_object_store_parts_as_they_are() {
        let every_ascii: String = (0u8..128).map(char::from).collect();
        for v in [
            every_ascii.as_str(),
            "München 東京",
            ".",
            "..",
            "null",
            "NULL",
        ] {
            let seg = segment("p", v);
            let part = object_store::path::PathPart::parse(&seg).unwrap();
            assert_eq!(part.as_ref(), seg);
            let decoded = percent_encoding::percent_decode_str(&seg["p=".len()..])
                .decode_utf8()
                .unwrap();
            assert_eq!(decoded, v);
        }
    }
}
