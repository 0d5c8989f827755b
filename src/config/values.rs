//! Parsing of the values written in `sluice.toml` and on the command line: sizes, durations,
//! date-times, `${env:NAME}` references, locations, names and compression suffixes; and
//! finding the line of a setting in the file, for messages.
//!
//! Each rule is written once, here: the validator, the binary and the other modules call these.

use std::path::Path;

use super::{Compression, Format};

/// Parses a size such as `4GiB`, `512MiB`, `2GB`, `1000000` into bytes.
pub fn parse_size(s: &str) -> Option<usize> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = num * mult;
    (bytes.is_finite() && bytes >= 1.0).then_some(bytes as usize)
}

/// The largest object S3 copies in one request (CopyObject, and each part of a multipart
/// copy): 5 GiB.
pub const S3_COPY_LIMIT: u64 = 5 << 30;

/// The largest `target_file_size` of an S3 sink: 1 GiB under [`S3_COPY_LIMIT`], far more than
/// a file's slack over its target (`docs/outputs.md#file-sizes`).
pub const S3_MAX_TARGET_FILE_SIZE: u64 = 4 << 30;

/// The largest file a publish can move on a store with URL scheme `scheme`, if it is limited:
/// a move is a copy and a delete, and on S3 (`s3`, `s3a`) a copy (CopyObject) takes at most
/// [`S3_COPY_LIMIT`]; object_store 0.13 has no multipart copy of byte ranges (UploadPartCopy)
/// that larger objects would need. Local disk renames; other stores are not limited here.
pub fn max_copy_bytes(scheme: &str) -> Option<u64> {
    matches!(scheme.to_ascii_lowercase().as_str(), "s3" | "s3a").then_some(S3_COPY_LIMIT)
}

/// Why `target_file_size` cannot be `bytes` for a sink at `location` (a resolved location: a
/// URL or an absolute path), if it cannot: on S3 it is at most [`S3_MAX_TARGET_FILE_SIZE`].
pub fn refuse_target_file_size(location: &str, bytes: u64) -> Option<String> {
    let (scheme, _) = location.split_once("://")?;
    max_copy_bytes(scheme)?;
    (bytes > S3_MAX_TARGET_FILE_SIZE).then(|| {
        format!(
            "{} is too large for an S3 sink: at most 4GiB (publishing copies each file, and S3 \
             copies at most 5GiB in one request)",
            gib(bytes)
        )
    })
}

/// Why a file of `bytes` cannot be published where a move copies at most `max`.
pub fn too_large_to_copy(bytes: u64, max: u64) -> String {
    format!(
        "the file is {} ({bytes} bytes), over the {} an S3 copy takes ({max} bytes), and \
         publishing copies each file to its final key: lower the sink's target_file_size (a \
         single row this large cannot be published to S3)",
        gib(bytes),
        gib(max),
    )
}

/// `5368709120` → `5.0 GiB`.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Parses a duration such as `30m`, `90s`, `2h`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => std::time::Duration::from_millis(n),
            "s" | "" => std::time::Duration::from_secs(n),
            "m" | "min" => std::time::Duration::from_secs(n * 60),
            "h" => std::time::Duration::from_secs(n * 3600),
            "d" => std::time::Duration::from_secs(n * 86400),
            _ => return None,
        };
    }
    Some(total)
}

/// A duration as [`parse_duration`] reads it back, in hours when whole: `48h`, `90m`.
pub fn format_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    match s {
        0 => "0h".to_string(),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Parses `2024-01-01` or `2024-01-01T06:00:00` (or with a space; seconds may have a
/// fraction).
pub fn parse_datetime(s: &str) -> Option<chrono::NaiveDateTime> {
    let s = s.trim();
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
}

/// Looks up environment variables. The library never reads the process environment itself:
/// `main` passes it in, and tests pass their own.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Whether a file or folder name is hidden from readers: `.name`, or `_name` (`_MANIFEST`,
/// `_SUCCESS`, `_staging`) unless it is a partition folder (`_col=value`). The one rule for
/// which entries of a folder hold data, for sources and outputs alike.
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('.') || (name.starts_with('_') && !name.contains('='))
}

/// The current time as sluice writes it everywhere (reports, the state store, manifests):
/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-29T04:48:18.123Z`.
pub fn timestamp_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A timestamp as [`timestamp_now`] writes it (any RFC 3339 offset), in UTC.
pub fn parse_timestamp(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Replaces every `${env:NAME}` in `value`; `Err(NAME)` for the first unset variable.
pub fn interpolate_env(value: &str, env: EnvLookup<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${env:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 6..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = after[..end].trim();
        out.push_str(&env(name).ok_or_else(|| name.to_string())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The first `${env:NAME}` in `value` whose variable is set but empty: in a location it
/// would drop a folder from the path, naming a wider folder than meant.
pub(super) fn empty_variable(value: &str, env: EnvLookup<'_>) -> Option<String> {
    let mut rest = value;
    while let Some(start) = rest.find("${env:") {
        let after = &rest[start + 6..];
        let end = after.find('}')?;
        let name = after[..end].trim();
        if env(name).is_some_and(|v| v.is_empty()) {
            return Some(name.to_string());
        }
        rest = &after[end + 1..];
    }
    None
}

/// Resolves a location against a base folder: URLs stay as they are; a `file:` URL (any
/// spelling: `file:///abs`, `file://localhost/abs`, `file:/abs`, percent-escapes decoded) and
/// a path become an absolute path, relative ones joined to `base`, with `.` and `..` resolved
/// (so two spellings of one folder compare equal: `out/a/`, `./out/a/`, `out/b/../a/`,
/// `file:///abs/out/a/`); a trailing `/` (meaning "a folder") is kept.
pub fn resolve_location(location: &str, base: &Path) -> String {
    let from_url;
    let local = if location.starts_with("file:") {
        match url::Url::parse(location)
            .ok()
            .and_then(|u| u.to_file_path().ok())
        {
            Some(path) => {
                from_url = path.to_string_lossy().into_owned();
                from_url.as_str()
            }
            None => location,
        }
    } else if location.contains("://") {
        return location.to_string();
    } else {
        location
    };
    let p = Path::new(local);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let mut normal = std::path::PathBuf::new();
    for part in joined.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    let mut s = normal.to_string_lossy().into_owned();
    if location.ends_with('/') && !s.ends_with('/') {
        s.push('/');
    }
    s
}

/// A folder as the file system knows it, for telling whether two locations overlap: a local
/// path with its symbolic links resolved (as far as it exists; the rest appended), ending in
/// `/`; a URL as it is. Two spellings of one folder through a link give one key.
pub(crate) fn folder_identity(location: &str) -> String {
    let mut key = if location.contains("://") {
        location.to_string()
    } else {
        let path = Path::new(location);
        let mut existing = path;
        let mut rest = Vec::new();
        let canonical = loop {
            if let Ok(c) = std::fs::canonicalize(existing) {
                break Some(c);
            }
            match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    existing = parent;
                }
                _ => break None,
            }
        };
        match canonical {
            Some(mut c) => {
                c.extend(rest.iter().rev());
                c.to_string_lossy().into_owned()
            }
            None => location.to_string(),
        }
    };
    if !key.ends_with('/') {
        key.push('/');
    }
    key
}

/// The empty segment of a path location (`out//x/`, what `out/${env:TEAM}/x/` gives with
/// `TEAM` empty), which would make it another, wider folder than meant.
pub(super) fn empty_segment(location: &str) -> bool {
    let path = match location.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, p)| p),
        None => location,
    };
    path.contains("//") || (location.contains("://") && path.starts_with('/'))
}

/// 1-based line and column of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The line of the setting `key` (`settings.threads`, `models.m.checks[1].severity`,
/// `models.m.batches`) in the TOML `text`: under its table's header (the n-th one for an array
/// of tables), the line that sets its last part; or the header itself for a table. `None` when
/// the setting is written another way (an inline table, dotted keys).
pub(super) fn key_line(text: &str, key: &str) -> Option<usize> {
    let header_line = |table: &str, index: usize| -> Option<usize> {
        let mut seen = 0;
        for (n, line) in text.lines().enumerate() {
            let l = line.trim();
            let name = l
                .strip_prefix("[[")
                .and_then(|l| l.strip_suffix("]]"))
                .or_else(|| l.strip_prefix('[').and_then(|l| l.strip_suffix(']')));
            if name.map(str::trim) == Some(table) {
                if seen == index {
                    return Some(n);
                }
                seen += 1;
            }
        }
        None
    };
    let split_index = |t: &str| -> (String, usize) {
        match t
            .strip_suffix(']')
            .and_then(|t| t.rsplit_once('['))
            .and_then(|(t, i)| Some((t.to_string(), i.parse().ok()?)))
        {
            Some(x) => x,
            None => (t.to_string(), 0),
        }
    };
    if let Some((table, leaf)) = key.rsplit_once('.') {
        let (table, index) = split_index(table);
        if let Some(start) = header_line(&table, index) {
            for (n, line) in text.lines().enumerate().skip(start + 1) {
                let l = line.trim();
                if l.starts_with('[') {
                    break;
                }
                if let Some(rest) = l.strip_prefix(leaf)
                    && rest.trim_start().starts_with('=')
                {
                    return Some(n + 1);
                }
            }
            // A setting missing from its table (a required one): the table's header.
            if header_line(key, 0).is_none() {
                return Some(start + 1);
            }
        }
    }
    let (table, index) = split_index(key);
    header_line(&table, index).map(|n| n + 1)
}

/// Parses a one-character setting (a CSV delimiter, quote or escape): a single ASCII
/// character, or the two characters `\t` for a tab.
pub(super) fn single_byte(s: &str) -> Option<u8> {
    let s = if s == "\\t" { "\t" } else { s };
    (s.len() == 1).then(|| s.as_bytes()[0])
}

/// Whether a table name can be written unquoted in SQL and found again: SQL folds unquoted
/// names to lower case, so upper-case letters are not allowed.
pub(super) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The format of the first data file in a local folder (skipping `_` and `.` entries), if the
/// location is one. Remote folders are not listed while loading the configuration.
pub(super) fn local_folder_format(dir: &Path) -> Option<Format> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name()?.to_string_lossy().into_owned();
            if is_hidden(&name) {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if let Some(f) = Format::from_path(&name) {
                return Some(f);
            }
        }
    }
    None
}

/// The compression suffixes sluice knows, with the compression each means.
const COMPRESSION_SUFFIXES: [(&str, Compression); 4] = [
    (".gz", Compression::Gzip),
    (".zst", Compression::Zstd),
    (".bz2", Compression::Bzip2),
    (".xz", Compression::Xz),
];

/// Splits a compression suffix (`.gz`, `.zst`, `.bz2`, `.xz`, in any case) off a file name or
/// location: `("data.csv", Gzip)` for `data.csv.gz`, `(path, None)` when there is none. The one
/// rule behind [`Format::from_path`](super::Format::from_path) and
/// [`Compression::from_path`], and [`Compression::suffix`] is its inverse.
pub fn split_compression(path: &str) -> (&str, Compression) {
    COMPRESSION_SUFFIXES
        .iter()
        .find_map(|&(suffix, c)| {
            let start = path.len().checked_sub(suffix.len())?;
            let tail = path.get(start..)?;
            tail.eq_ignore_ascii_case(suffix)
                .then(|| (&path[..start], c))
        })
        .unwrap_or((path, Compression::None))
}

/// The suffix of a compression, `""` for none: the inverse of [`split_compression`].
pub(super) fn compression_suffix(c: Compression) -> &'static str {
    COMPRESSION_SUFFIXES
        .iter()
        .find(|&&(_, k)| k == c)
        .map_or("", |&(suffix, _)| suffix)
}
