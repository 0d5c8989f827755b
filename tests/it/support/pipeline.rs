//! A pipeline folder with one source and one model, the layout most single-feature tests
//! use:
//!
//! ```text
//! data/                  the source's files
//! queries/<model>.sql    the model's query
//! sluice.toml            [sources.<source>] location = "data/" ...
//!                        [models.<model>.sink] location = "out/<model>/" ...
//! ```

use std::path::PathBuf;

/// Builds a [one-source, one-model pipeline](self) in a fresh temporary folder.
#[derive(Debug, Clone)]
pub struct OneModel {
    source: String,
    source_location: Option<String>,
    source_toml: Vec<String>,
    model: String,
    query: Option<String>,
    sink_location: Option<String>,
    sink_toml: Vec<String>,
    files: Vec<(String, File)>,
}

#[derive(Debug, Clone)]
enum File {
    Copy(PathBuf),
    Text(Vec<u8>),
}

impl OneModel {
    /// Source `source` reading `data/`, model `model` = `SELECT * FROM <source>` written to
    /// `out/<model>/` (Parquet), no files in `data/` yet.
    pub fn new(source: &str, model: &str) -> OneModel {
        OneModel {
            source: source.to_string(),
            source_location: None,
            source_toml: Vec::new(),
            model: model.to_string(),
            query: None,
            sink_location: None,
            sink_toml: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Adds lines to the source's table (`format = "csv"`, `schema = "..."`); several lines
    /// may be given at once, and calls add up in order.
    pub fn source_toml(mut self, lines: &str) -> OneModel {
        self.source_toml.push(lines.to_string());
        self
    }

    /// Where the source reads (default `data/`, where [`OneModel::file`] writes).
    pub fn source_location(mut self, location: &str) -> OneModel {
        self.source_location = Some(location.to_string());
        self
    }

    /// The model's query.
    pub fn query(mut self, sql: &str) -> OneModel {
        self.query = Some(sql.to_string());
        self
    }

    /// Where the model is written, relative to the pipeline (default `out/<model>/`).
    pub fn sink_location(mut self, location: &str) -> OneModel {
        self.sink_location = Some(location.to_string());
        self
    }

    /// Adds lines to the model's sink table (`format = "csv"`).
    pub fn sink_toml(mut self, lines: &str) -> OneModel {
        self.sink_toml.push(lines.to_string());
        self
    }

    /// Copies the file `from` to `data/<to>` (folders created as needed).
    pub fn copy(mut self, from: impl Into<PathBuf>, to: &str) -> OneModel {
        self.files.push((to.to_string(), File::Copy(from.into())));
        self
    }

    /// Writes `contents` to `data/<to>` (folders created as needed).
    pub fn file(mut self, to: &str, contents: impl Into<Vec<u8>>) -> OneModel {
        self.files
            .push((to.to_string(), File::Text(contents.into())));
        self
    }

    /// The `sluice.toml` text.
    pub fn toml(&self) -> String {
        let mut toml = format!(
            "[sources.{}]\nlocation = \"{}\"\n",
            self.source,
            self.source_location.as_deref().unwrap_or("data/")
        );
        for lines in &self.source_toml {
            push_lines(&mut toml, lines);
        }
        let location = self
            .sink_location
            .clone()
            .unwrap_or_else(|| format!("out/{}/", self.model));
        toml.push_str(&format!(
            "[models.{}.sink]\nlocation = \"{location}\"\n",
            self.model
        ));
        for lines in &self.sink_toml {
            push_lines(&mut toml, lines);
        }
        toml
    }

    /// Writes the pipeline into a new temporary folder.
    pub fn build(self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("data")).unwrap();
        std::fs::create_dir_all(d.join("queries")).unwrap();
        for (to, file) in &self.files {
            let to = d.join("data").join(to);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            match file {
                File::Copy(from) => {
                    std::fs::copy(from, &to)
                        .unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
                }
                File::Text(bytes) => std::fs::write(&to, bytes).unwrap(),
            }
        }
        let query = self
            .query
            .clone()
            .unwrap_or_else(|| format!("SELECT * FROM {}", self.source));
        std::fs::write(d.join(format!("queries/{}.sql", self.model)), query).unwrap();
        std::fs::write(d.join("sluice.toml"), self.toml()).unwrap();
        dir
    }
}

/// Appends `lines` to `toml`, ending with a newline.
fn push_lines(toml: &mut String, lines: &str) {
    if lines.is_empty() {
        return;
    }
    toml.push_str(lines);
    if !lines.ends_with('\n') {
        toml.push('\n');
    }
}
