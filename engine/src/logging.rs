//! The daemon's log: one line per significant event on stderr, which
//! journald collects under systemd.
//!
//! Code logs through the `log` facade (`log::info!` etc.); this module is
//! the one logger behind it. Lines read `sendengine: MESSAGE`, with
//! `warning:`/`error:`/`debug:` after the prefix for the other levels and
//! the module path for debug and trace. Under journald (`$JOURNAL_STREAM`
//! set) each line also starts with its syslog priority (`<6>`), which
//! journald turns into the entry's level. The filter is `RUST_LOG`-style
//! (`info`, `sendengine=debug`, `warn,sendengine::deliver=trace`) and can
//! be replaced while running (SIGHUP). A few lifecycle lines (listening,
//! ready, stopped) bypass the filter: supervisors and scripts wait for them.

use std::io::Write;
use std::sync::RwLock;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Used when neither `RUST_LOG` nor `[log] filter` says otherwise: our own
/// events, and only warnings from the libraries.
pub const DEFAULT_FILTER: &str = "warn,sendengine=info";

/// Longest filter specification accepted, so a typo cannot grow without bound.
const MAX_FILTER_LEN: usize = 1_024;

/// A parsed `RUST_LOG`-style filter: a default level and per-module levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    default: LevelFilter,
    /// (module path prefix, level); the longest matching prefix wins.
    modules: Vec<(String, LevelFilter)>,
}

impl Filter {
    /// Parses `LEVEL`, `MODULE=LEVEL` and comma-separated lists of them.
    pub fn parse(spec: &str) -> Result<Filter, String> {
        if spec.len() > MAX_FILTER_LEN {
            return Err(format!("longer than {MAX_FILTER_LEN} characters"));
        }
        let mut filter = Filter {
            default: LevelFilter::Warn,
            modules: Vec::new(),
        };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((module, level)) => {
                    let module = module.trim();
                    if module.is_empty() {
                        return Err(format!("`{part}`: the module name is missing"));
                    }
                    filter
                        .modules
                        .push((module.to_owned(), parse_level(level)?));
                }
                None => match parse_level(part) {
                    Ok(level) => filter.default = level,
                    // A bare module name means "everything from it".
                    Err(_) if is_module_path(part) => {
                        filter.modules.push((part.to_owned(), LevelFilter::Trace))
                    }
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(filter)
    }

    fn level_for(&self, target: &str) -> LevelFilter {
        self.modules
            .iter()
            .filter(|(module, _)| within(target, module))
            .max_by_key(|(module, _)| module.len())
            .map_or(self.default, |(_, level)| *level)
    }

    fn max_level(&self) -> LevelFilter {
        self.modules
            .iter()
            .map(|(_, level)| *level)
            .fold(self.default, Ord::max)
    }

    pub fn enabled(&self, level: Level, target: &str) -> bool {
        level <= self.level_for(target)
    }
}

fn parse_level(text: &str) -> Result<LevelFilter, String> {
    text.trim().parse().map_err(|_| {
        format!("`{text}` is not a log level (use off, error, warn, info, debug or trace)")
    })
}

fn is_module_path(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `sendengine::deliver` is within `sendengine`, `sendengine_queue` is not.
fn within(target: &str, module: &str) -> bool {
    target
        .strip_prefix(module)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

struct Logger {
    filter: RwLock<Option<Filter>>,
}

static LOGGER: Logger = Logger {
    filter: RwLock::new(None),
};

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let filter = self.filter.read().unwrap_or_else(|p| p.into_inner());
        filter
            .as_ref()
            .is_some_and(|f| f.enabled(metadata.level(), metadata.target()))
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            write_line(record.level(), record.target(), &record.args().to_string());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger with `RUST_LOG` if set, else `configured`, else
/// `DEFAULT_FILTER`. Returns the filter text in use. A bad `RUST_LOG` is
/// an error the caller reports; it is not silently ignored.
pub fn init(configured: Option<&str>) -> Result<String, String> {
    let spec = filter_spec(configured);
    let filter = Filter::parse(&spec).map_err(|e| format!("log filter `{spec}`: {e}"))?;
    install(filter);
    // Only fails when a logger is already set (a second init): keep the first.
    let _ = log::set_logger(&LOGGER);
    Ok(spec)
}

/// The filter text that applies: `RUST_LOG` wins over the configuration.
pub fn filter_spec(configured: Option<&str>) -> String {
    match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => env,
        _ => configured.unwrap_or(DEFAULT_FILTER).to_owned(),
    }
}

/// Replaces the filter of the running logger (SIGHUP).
pub fn set_filter(filter: Filter) {
    install(filter);
}

fn install(filter: Filter) {
    log::set_max_level(filter.max_level());
    *LOGGER.filter.write().unwrap_or_else(|p| p.into_inner()) = Some(filter);
}

/// A lifecycle line ("listening on ...", "ready", "stopped") that is
/// printed whatever the filter: tests, scripts and operators wait for it.
pub fn announce(message: &str) {
    write_line(Level::Info, "sendengine", message);
}

fn write_line(level: Level, target: &str, message: &str) {
    let line = format_line(level, target, message, under_journald());
    // One write per line, so lines from several threads do not interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn format_line(level: Level, target: &str, message: &str, journald: bool) -> String {
    let priority = match level {
        Level::Error => "<3>",
        Level::Warn => "<4>",
        Level::Info => "<6>",
        Level::Debug | Level::Trace => "<7>",
    };
    let tag = match level {
        Level::Error => "error: ".to_owned(),
        Level::Warn => "warning: ".to_owned(),
        Level::Info => String::new(),
        Level::Debug => format!("debug: {target}: "),
        Level::Trace => format!("trace: {target}: "),
    };
    // A library's message says which library it comes from.
    let origin = if level <= Level::Info && !within(target, "sendengine") {
        format!("{target}: ")
    } else {
        String::new()
    };
    let priority = if journald { priority } else { "" };
    // A message never spans lines: one event, one line.
    let message = message.replace('\n', " ");
    format!("{priority}sendengine: {tag}{origin}{message}\n")
}

fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_longest_module_prefix() {
        let f = Filter::parse("warn,sendengine=info,sendengine::deliver=trace").unwrap();
        assert!(f.enabled(Level::Info, "sendengine::daemon"));
        assert!(!f.enabled(Level::Debug, "sendengine::daemon"));
        assert!(f.enabled(Level::Trace, "sendengine::deliver::record"));
        assert!(!f.enabled(Level::Info, "rustls::conn"));
        assert!(f.enabled(Level::Warn, "rustls::conn"));
        assert!(!f.enabled(Level::Info, "sendengine_queue"));
        assert_eq!(f.max_level(), LevelFilter::Trace);
    }

    #[test]
    fn bare_level_and_bare_module() {
        let f = Filter::parse("debug").unwrap();
        assert!(f.enabled(Level::Debug, "anything"));
        let f = Filter::parse("sendengine").unwrap();
        assert!(f.enabled(Level::Trace, "sendengine::smtp"));
        assert!(!f.enabled(Level::Info, "hickory"));
    }

    #[test]
    fn bad_filters_say_why() {
        let e = Filter::parse("sendengine=loud").unwrap_err();
        assert!(e.contains("`loud` is not a log level"), "{e}");
        assert!(Filter::parse("=info").is_err());
        assert!(Filter::parse("no such thing").is_err());
    }

    #[test]
    fn line_format_keeps_the_parsed_lines() {
        let line = format_line(Level::Info, "sendengine::daemon", "ready", false);
        assert_eq!(line, "sendengine: ready\n");
        let line = format_line(Level::Warn, "sendengine::daemon", "a\nb", true);
        assert_eq!(line, "<4>sendengine: warning: a b\n");
        let line = format_line(Level::Debug, "sendengine::reload", "x", false);
        assert_eq!(line, "sendengine: debug: sendengine::reload: x\n");
        let line = format_line(Level::Warn, "rustls::conn", "x", false);
        assert_eq!(line, "sendengine: warning: rustls::conn: x\n");
    }
}
