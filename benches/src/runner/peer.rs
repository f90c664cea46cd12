//! The Postfix peer, run in the same session as our scenario: the project's
//! `peer-postfix.sh` (Postfix, or Postfix + opendkim, between smtp-source
//! and smtp-sink on loopback), read back from its `results.tsv`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::RunError;

/// The default location of the script, from the repository root.
pub const DEFAULT_SCRIPT: &str = "../shared/bench/peer-postfix.sh";

/// One measure of the peer script: "postfix" (b) or "dkim" (c).
#[derive(Debug, Clone)]
pub struct PeerRun {
    pub script: PathBuf,
    /// The script's output folder (its `OUT`).
    pub out_dir: PathBuf,
    pub test: &'static str,
    pub messages: u64,
    pub size: usize,
    pub reps: usize,
}

/// The kept repetitions of a peer measure.
#[derive(Debug, Clone, Default)]
pub struct PeerResult {
    pub inject_rate: Vec<f64>,
    pub e2e_rate: Vec<f64>,
    /// Postfix (+ opendkim) CPU per message, in ms.
    pub cpu_ms_per_msg: Vec<f64>,
    /// Repetitions the script marked contended or failed.
    pub flagged: Vec<String>,
}

impl PeerRun {
    /// Runs the script (as root; it prints its progress on stderr) and reads
    /// its results.
    pub fn run(&self) -> Result<PeerResult, RunError> {
        let status = Command::new("bash")
            .arg(&self.script)
            .env("TESTS", self.test)
            .env("N", self.messages.to_string())
            .env("MSG_SIZE", self.size.to_string())
            .env("REPS", self.reps.to_string())
            .env("SKIP_PHYS", "1")
            .env("OUT", &self.out_dir)
            .status()
            .map_err(|source| RunError::Io {
                what: format!("cannot run {}", self.script.display()),
                source,
            })?;
        if !status.success() {
            return Err(RunError::Failed(format!(
                "{} failed ({status}); see its output above",
                self.script.display()
            )));
        }
        let results = self.out_dir.join("results.tsv");
        let text = std::fs::read_to_string(&results).map_err(|source| RunError::Io {
            what: format!("cannot read {}", results.display()),
            source,
        })?;
        Ok(parse_results(&text, self.test))
    }
}

/// The kept rows of `test` in the script's results.tsv.
pub fn parse_results(tsv: &str, test: &str) -> PeerResult {
    let mut lines = tsv.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    let column: HashMap<&str, usize> = header.iter().enumerate().map(|(i, c)| (*c, i)).collect();
    let mut result = PeerResult::default();
    for line in lines {
        let fields: Vec<&str> = line.split('\t').collect();
        let field = |name: &str| column.get(name).and_then(|&i| fields.get(i)).copied();
        let number = |name: &str| {
            field(name)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if field("test") != Some(test) || field("kept") != Some("1") {
            continue;
        }
        let status = field("status").unwrap_or("");
        if status != "ok" {
            result
                .flagged
                .push(format!("rep {}: {status}", field("rep").unwrap_or("?")));
            if status != "contended" {
                continue;
            }
        }
        let n = number("n").max(1.0);
        result.inject_rate.push(number("inject_rate"));
        result.e2e_rate.push(number("e2e_rate"));
        let cpu_s = number("postfix_cpu_s") + number("opendkim_cpu_s");
        result.cpu_ms_per_msg.push(1000.0 * cpu_s / n);
    }
    result
}

/// The script next to the repository, if it is there.
pub fn default_script() -> Option<PathBuf> {
    let path = Path::new(DEFAULT_SCRIPT);
    path.is_file().then(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kept_rows_of_one_test() {
        let tsv = "test\trep\ttry\tkept\tn\tinject_rate\te2e_rate\tpostfix_cpu_s\topendkim_cpu_s\tstatus\n\
                   postfix\t1\t1\t0\t1000\t900\t800\t2.0\t0\tcontended\n\
                   postfix\t1\t2\t1\t1000\t950\t850\t1.8\t0\tok\n\
                   dkim\t1\t1\t1\t1000\t400\t390\t2.5\t1.5\tok\n";
        let postfix = parse_results(tsv, "postfix");
        assert_eq!(postfix.e2e_rate, vec![850.0]);
        assert_eq!(postfix.cpu_ms_per_msg, vec![1.8]);
        let dkim = parse_results(tsv, "dkim");
        assert_eq!(dkim.cpu_ms_per_msg, vec![4.0]);
        assert!(dkim.flagged.is_empty());
    }
}
