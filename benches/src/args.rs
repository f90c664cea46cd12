//! A small command-line reader for the tools' `--flag value` and `--switch`
//! arguments. Hand-written because the tools take a dozen plain options and a
//! parser crate would add more build time than it saves code.

use std::collections::VecDeque;
use std::fmt::Display;
use std::str::FromStr;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgError {
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("bad value {value:?} for {flag}: {reason}")]
    BadValue {
        flag: String,
        value: String,
        reason: String,
    },
    #[error("unknown argument {0:?}")]
    Unknown(String),
    #[error("{0} is required")]
    Required(String),
}

/// The arguments not read yet, in order.
pub struct Args {
    rest: VecDeque<String>,
}

impl Args {
    /// The process's arguments, without the program name.
    pub fn from_env() -> Self {
        Self::new(std::env::args().skip(1))
    }

    pub fn new(args: impl IntoIterator<Item = String>) -> Self {
        Args {
            rest: args.into_iter().collect(),
        }
    }

    /// The next flag, e.g. "--listen"; `--flag=value` is split into the flag
    /// and its value.
    pub fn next_flag(&mut self) -> Option<String> {
        let arg = self.rest.pop_front()?;
        if arg.starts_with("--")
            && let Some((flag, value)) = arg.split_once('=')
        {
            self.rest.push_front(value.to_string());
            return Some(flag.to_string());
        }
        Some(arg)
    }

    /// The value that follows `flag`.
    pub fn value(&mut self, flag: &str) -> Result<String, ArgError> {
        self.rest
            .pop_front()
            .ok_or_else(|| ArgError::MissingValue(flag.to_string()))
    }

    /// The value that follows `flag`, parsed.
    pub fn parsed<T>(&mut self, flag: &str) -> Result<T, ArgError>
    where
        T: FromStr,
        T::Err: Display,
    {
        let value = self.value(flag)?;
        value.parse().map_err(|err: T::Err| ArgError::BadValue {
            flag: flag.to_string(),
            value,
            reason: err.to_string(),
        })
    }
}

/// Splits "USER:PASS" for `--auth`.
pub fn parse_credentials(flag: &str, value: &str) -> Result<(String, String), ArgError> {
    value
        .split_once(':')
        .map(|(user, pass)| (user.to_string(), pass.to_string()))
        .ok_or_else(|| ArgError::BadValue {
            flag: flag.to_string(),
            value: value.to_string(),
            reason: "expected USER:PASS".to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::new(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn reads_flags_values_and_equals_form() {
        let mut args = args(&["--messages", "10", "--size=20", "--json"]);
        assert_eq!(args.next_flag().as_deref(), Some("--messages"));
        assert_eq!(args.parsed::<u64>("--messages"), Ok(10));
        assert_eq!(args.next_flag().as_deref(), Some("--size"));
        assert_eq!(args.parsed::<usize>("--size"), Ok(20));
        assert_eq!(args.next_flag().as_deref(), Some("--json"));
        assert_eq!(args.next_flag(), None);
    }

    #[test]
    fn reports_missing_and_bad_values() {
        let mut args = args(&["--messages"]);
        args.next_flag();
        assert!(matches!(
            args.parsed::<u64>("--messages"),
            Err(ArgError::MissingValue(_))
        ));
        let mut args = self::args(&["--messages", "ten"]);
        args.next_flag();
        assert!(matches!(
            args.parsed::<u64>("--messages"),
            Err(ArgError::BadValue { .. })
        ));
    }

    #[test]
    fn splits_credentials() {
        assert_eq!(
            parse_credentials("--auth", "user:pa:ss"),
            Ok(("user".to_string(), "pa:ss".to_string()))
        );
        assert!(parse_credentials("--auth", "nopass").is_err());
    }
}
