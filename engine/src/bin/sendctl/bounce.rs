//! `sendctl bounce parse FILE...`: the daemon's bounce parser, offline.

use std::process::ExitCode;

use serde_json::Value;

/// Parses bounce emails with the daemon's parser, without a daemon, and
/// prints one record per affected recipient: a JSON line each with
/// `json`, else tab-separated columns.
pub fn run(files: &[String], json: bool) -> ExitCode {
    let mut failed = false;
    let mut rows = Vec::new();
    for file in files {
        match sendengine_bounces::parse_file_records(std::path::Path::new(file)) {
            Ok(records) => rows.extend(records),
            Err(e) => {
                eprintln!("sendctl: {e}");
                failed = true;
            }
        }
    }
    for record in &rows {
        let value = serde_json::to_value(record).unwrap_or(Value::Null);
        if json {
            println!("{value}");
        } else {
            let field = |k: &str| match &value[k] {
                Value::Null => "-".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                field("file"),
                field("kind"),
                field("recipient"),
                field("status"),
                field("category"),
                if value["hard"] == Value::Bool(true) {
                    "hard"
                } else {
                    "soft"
                }
            );
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
