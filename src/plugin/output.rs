//! Printing as kubectl prints: aligned tables (columns padded with three spaces, a header
//! in capitals unless `--no-headers`), or the objects as JSON or YAML, or `kind/name`.

/// `-o`: how a command prints what it shows.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    /// The table with more columns.
    Wide,
    Json,
    Yaml,
    /// `mailincident.mailops.dev/NAME`, one per line.
    Name,
}

/// A table: a header and rows of cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: vec![],
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The table as kubectl aligns it; the last column is not padded.
    pub fn render(&self, headers: bool) -> String {
        let lines: Vec<&Vec<String>> = headers
            .then_some(&self.header)
            .into_iter()
            .chain(&self.rows)
            .collect();
        let columns = self.header.len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l.get(c).map_or(0, |cell| cell.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (c, width) in widths.iter().enumerate() {
                let cell = line.get(c).map_or("", String::as_str);
                if c + 1 == columns {
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    text.push_str(&" ".repeat(width - cell.chars().count() + 3));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Prints `objects` as `-o` asks: the table, a kubectl-style `List` in JSON or YAML, or
/// one `mailincident.mailops.dev/NAME` per line.
pub fn print_objects<K: serde::Serialize + kube::Resource>(
    objects: &[K],
    table: &Table,
    output: super::OutputArgs,
) -> Result<(), super::PluginError> {
    let list = || {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": objects,
            "metadata": {"resourceVersion": ""},
        })
    };
    let text = match output.output {
        Format::Table | Format::Wide => table.render(!output.no_headers),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&list())
                .map_err(|e| super::PluginError::Refused(e.to_string()))?
        ),
        Format::Yaml => serde_yaml::to_string(&list())
            .map_err(|e| super::PluginError::Refused(e.to_string()))?,
        Format::Name => objects
            .iter()
            .map(|o| {
                format!(
                    "mailincident.mailops.dev/{}\n",
                    o.meta().name.as_deref().unwrap_or_default()
                )
            })
            .collect(),
    };
    print!("{text}");
    Ok(())
}

/// Prints one object as `-o` asks, alone (not in a `List`), as kubectl prints what a
/// dry run would write; tables are the caller's.
pub fn print_object<K: serde::Serialize + kube::Resource>(
    object: &K,
    output: Format,
) -> Result<(), super::PluginError> {
    let refused = |e: &dyn std::fmt::Display| super::PluginError::Refused(e.to_string());
    let text = match output {
        Format::Table | Format::Wide => String::new(),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(object).map_err(|e| refused(&e))?
        ),
        Format::Yaml => serde_yaml::to_string(object).map_err(|e| refused(&e))?,
        Format::Name => format!(
            "mailincident.mailops.dev/{}\n",
            object.meta().name.as_deref().unwrap_or_default()
        ),
    };
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_aligned_as_kubectl_aligns_it() {
        let mut table = Table::new(&["NAME", "MODE", "REASON"]);
        table.push(vec![
            "storage-outage".into(),
            "TempFail".into(),
            "INC-1".into(),
        ]);
        table.push(vec!["w".into(), "".into(), "a long reason".into()]);
        assert_eq!(
            table.render(true),
            "NAME             MODE       REASON\nstorage-outage   TempFail   INC-1\nw                           a long reason\n"
        );
        assert_eq!(table.render(false).lines().count(), 2);
    }
}
